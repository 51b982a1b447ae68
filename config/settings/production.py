"""Production: no secret defaults, HTTPS everywhere. Fails fast when a secret is missing.

`manage.py check --deploy` with these settings reports nothing (config/tests/test_security.py).
Required: DJANGO_SECRET_KEY (50+ random characters), DJANGO_ALLOWED_HOSTS, STRIPE_SECRET_KEY.
Behind a TLS-terminating proxy that overwrites X-Forwarded-Proto: DJANGO_BEHIND_TLS_PROXY=true,
and TRUSTED_PROXY_COUNT=<number of our proxies> for the client IP (audit/middleware.py)."""

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import env


def _required(name: str) -> str:
    """The variable's value; missing or empty stops the process before it serves anything."""
    value = env.str(name, default="")
    if not value.strip():
        raise ImproperlyConfigured(f"{name} must be set in production (no default).")
    return value


DEBUG = False
SECRET_KEY = _required("DJANGO_SECRET_KEY")
if SECRET_KEY.startswith("dev-only-") or len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be 50+ random characters, not the development key.")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set in production (no default).")
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# base.py derives dj-stripe's key settings from STRIPE_SECRET_KEY with a development
# default; here the variable itself must be present (same value, so nothing to re-derive).
_required("STRIPE_SECRET_KEY")

# Transmission security (HIPAA 164.312(e)): HTTPS only, HSTS for a year with subdomains.
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env.bool("DJANGO_BEHIND_TLS_PROXY", default=False):
    # Only behind a proxy that overwrites this header on every request: a client could
    # otherwise claim HTTPS over plain HTTP.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Cookies: never over plain HTTP, never readable by scripts, not sent on cross-site
# requests; the __Host- prefix pins them to this exact host and path.
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_NAME = "__Host-sessionid"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True  # Swagger UI and the admin take the token from the page, not the cookie
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_NAME = "__Host-csrftoken"
