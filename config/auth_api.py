"""API authentication: hashed, expiring tokens (django-rest-knox) and rate limits.

- `POST /api/v1/auth/token/` `{username, password}` → `{token, token_type, expiry}`.
  A failed attempt is audited as `auth.login_failed` (outcome `denied`, never the
  password) by the `user_login_failed` receiver in audit/signals.py; a success as
  `auth.login` by the `user_logged_in` receiver.
- `POST /api/v1/auth/logout/` revokes the presented token (or ends the session).
- The token endpoint is throttled per client IP (`API_LOGIN_RATE`); the scheme and the
  throttles themselves are in config/authentication.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import authenticate, logout
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from knox.models import AuthToken
from knox.settings import knox_settings
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.models import Outcome
from audit.services import audit_record
from config.api import NoStoreMixin
from config.authentication import LoginRateThrottle
from config.errors import PermissionDeniedError


class TokenScheme(OpenApiAuthenticationExtension):
    """Documents config.authentication.TokenAuthentication (registered on import: urls
    import this module before any schema is generated)."""

    target_class = "config.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> Any:
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix=self.target.authenticate_header(None)
        )


class TokenRequestSerializer(serializers.Serializer[Any]):
    username = serializers.CharField(max_length=150, trim_whitespace=False)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


class TokenResponseSerializer(serializers.Serializer[Any]):
    token = serializers.CharField(help_text="Send as `Authorization: Token <token>`. Shown once; stored hashed.")
    token_type = serializers.CharField(default="Token")
    expiry = serializers.DateTimeField(allow_null=True, help_text="The token stops working at this time (UTC).")


ERROR = inline_serializer("Error", {"message": serializers.CharField(), "extra": serializers.DictField()})


class TokenView(NoStoreMixin, APIView):
    """Exchange a username and password for an API token (expires after `API_TOKEN_TTL_HOURS`)."""

    authentication_classes: list[Any] = []  # a stale token or session must not block a login
    permission_classes = [AllowAny]
    throttle_classes = [LoginRateThrottle]

    def get_authenticate_header(self, request: Request) -> str:
        return 'Token realm="api"'  # wrong credentials: 401 with a challenge, not 403

    @extend_schema(
        request=TokenRequestSerializer,
        responses={
            200: TokenResponseSerializer,
            400: OpenApiResponse(ERROR, description="Missing or malformed fields."),
            401: OpenApiResponse(ERROR, description="Wrong username or password, or an inactive user."),
            403: OpenApiResponse(ERROR, description="Too many unexpired tokens for this user."),
            429: OpenApiResponse(ERROR, description="Too many login attempts from this address."),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        """Exchange a username and password for an expiring API token; audited (spec §9)."""
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # authenticate() sends user_login_failed (audited, password cleansed) on failure.
        user = authenticate(
            request._request, username=data.validated_data["username"], password=data.validated_data["password"]
        )
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid username or password.")
        limit = knox_settings.TOKEN_LIMIT_PER_USER
        if limit is not None:
            live = AuthToken.objects.filter(Q(expiry__gt=timezone.now()) | Q(expiry__isnull=True), user=user)
            if live.count() >= limit:
                audit_record(
                    action="auth.login_failed",
                    target=user,
                    outcome=Outcome.DENIED,
                    reason="token limit reached",
                    data={"username": user.get_username(), "path": request.path},
                )
                raise PermissionDeniedError(
                    f"This user already holds {limit} unexpired tokens; log out with one of them first.",
                    {"limit": limit},
                )
        instance, token = AuthToken.objects.create(user=user, expiry=knox_settings.TOKEN_TTL)
        # Audited as auth.login by audit/signals.py; also updates last_login.
        user_logged_in.send(sender=user.__class__, request=request._request, user=user)
        expiry: datetime | None = instance.expiry
        return Response({"token": token, "token_type": "Token", "expiry": expiry})


class LogoutView(APIView):
    """Revoke the token this request carries; with a session, end the session."""

    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        """Revoke the token in use; audited (spec §9)."""
        if isinstance(request.auth, AuthToken):
            request.auth.delete()
            # Audited as auth.logout by audit/signals.py.
            user_logged_out.send(sender=request.user.__class__, request=request._request, user=request.user)
        else:
            logout(request._request)  # sends user_logged_out itself
        return Response(status=status.HTTP_204_NO_CONTENT)
