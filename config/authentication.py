"""Who is calling and how often: the API's authentication scheme and rate limits.

Listed in REST_FRAMEWORK (DEFAULT_AUTHENTICATION_CLASSES, DEFAULT_THROTTLE_CLASSES), so
this module is imported while rest_framework.views is still loading: it must not import
rest_framework.views (nor anything that does, such as config.api). The endpoints that use
it are in config/auth_api.py.

- `TokenAuthentication`: django-rest-knox's hashed, expiring tokens (`Authorization: Token
  <token>`), refusing malformed tokens with a 401 instead of a 500, and telling
  django-auditlog the actor (its middleware runs before DRF authenticates a token).
- Throttles count in the shared cache (settings `CACHES`) and key on the validated client
  IP (audit.middleware.client_ip, which honours `TRUSTED_PROXY_COUNT`) or on the user.
"""

from __future__ import annotations

import re
from typing import Any

from auditlog.context import auditlog_value
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.models import AuthToken
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from audit.middleware import client_ip

# --- Authentication -------------------------------------------------------------------

_TOKEN_SHAPE = re.compile(rb"[!-~]{1,256}")  # printable ASCII, no spaces


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's scheme, hardened against undecodable tokens and telling django-auditlog who
    the actor is (its middleware runs before DRF authenticates, so it only sees sessions)."""

    def authenticate_credentials(self, token: bytes) -> tuple[Any, AuthToken]:
        # knox decodes as UTF-8 (a 500 on other bytes) and queries with what it got (a NUL
        # byte is a 500 on PostgreSQL): anything but a plausible token is refused first.
        if not _TOKEN_SHAPE.fullmatch(token):
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(token)

    def authenticate(self, request: Request) -> tuple[Any, AuthToken] | None:
        result = super().authenticate(request)
        if result is not None:
            context = auditlog_value.get(None)
            if context is not None and context.get("actor") is None:
                context["actor"] = result[0]
        return result


# --- Throttling -----------------------------------------------------------------------


class _Throttle(SimpleRateThrottle):
    """Reads its rate when used (DRF binds the rates at import; tests and env overrides
    change them later)."""

    def get_rate(self) -> str | None:
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope or "")
        return None if rate is None else str(rate)

    def get_ident(self, request: Request) -> str:
        return client_ip(request._request) or "unknown"


class LoginRateThrottle(_Throttle):
    """Login attempts per client IP (`API_LOGIN_RATE`, default 10/min)."""

    scope = "login"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class ApiRateThrottle(_Throttle):
    """Requests per authenticated user, or per client IP when anonymous (`API_RATE`,
    default 600/min)."""

    scope = "api"

    def get_cache_key(self, request: Request, view: Any) -> str:
        user = request.user
        ident = f"user-{user.pk}" if user and user.is_authenticated else f"ip-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
