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
  They fail open: with the cache unreachable (Redis down) a request is let through
  unthrottled, not answered 500, and a warning is logged at most once a minute.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from auditlog.context import auditlog_value
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.models import AuthToken
from redis.exceptions import RedisError
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

logger = logging.getLogger(__name__)

# What an unreachable cache raises: redis-py's errors (connection refused, timeouts, a
# server still loading), and socket errors from any backend. Django's Redis backend does
# not wrap them. (The default database cache fails with the database, and so does the API.)
CACHE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


class CacheDownWarning:
    """Logs "the throttle cache is down" at most once per interval, counting the rest."""

    def __init__(self, interval_seconds: float = 60.0) -> None:
        self.interval_seconds = interval_seconds
        self._lock = threading.Lock()
        self._last: float | None = None
        self._held_back = 0

    def emit(self, scope: str | None, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.interval_seconds:
                self._held_back += 1
                return
            held_back, self._held_back, self._last = self._held_back, 0, now
        more = f" ({held_back} more since the last warning)" if held_back else ""
        logger.warning(
            "Throttle cache unreachable, failing open (requests are not rate-limited until it is back): "
            "scope %s, %s: %s%s",
            scope,
            type(exc).__name__,
            exc,
            more,
        )


_cache_down = CacheDownWarning()


class _Throttle(SimpleRateThrottle):
    """Reads its rate when used (DRF binds the rates at import; tests and env overrides
    change them later), and fails open when the cache is unreachable."""

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except CACHE_ERRORS as exc:
            # A cache outage must not take the API down with it: let the request through.
            _cache_down.emit(self.scope, exc)
            return True

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
