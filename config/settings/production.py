"""Production: no secret defaults, HTTPS everywhere. Fails fast when a secret is missing
or Stripe is half-configured (config/tests/test_production_settings.py).

`manage.py check --deploy` with these settings reports nothing (config/tests/test_security.py).
Required: DJANGO_SECRET_KEY (50+ random characters), DJANGO_ALLOWED_HOSTS, STRIPE_SECRET_KEY,
STRIPE_WEBHOOK_SECRET (`whsec_…`), STRIPE_PUSH_ENABLED=true (or, to run with pushes off on
purpose, STRIPE_DISABLED_I_KNOW=true instead), STRIPE_API_BASE empty (Stripe's own) or https://.
AUDIT_HMAC_KEYS (`<key id>:<secret>[,<older id>:<secret>…]`, secrets of 32+ characters,
not the development key) keys the audit chain.
Refused: STRIPE_ALLOW_IN_TRANSACTION (a test-only escape hatch), OPERATOR_MFA_REQUIRED=false,
OPERATOR_MFA_THROTTLE_FACTOR=0 (operator MFA, config/mfa/).
Behind a TLS-terminating proxy that overwrites X-Forwarded-Proto: DJANGO_BEHIND_TLS_PROXY=true,
and TRUSTED_PROXY_COUNT=<number of our proxies> for the client IP (audit/middleware.py)."""

import warnings
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from audit.keys import DEV_KEY_MARKER as DEV_AUDIT_KEY_MARKER
from audit.keys import MIN_SECRET_LENGTH as MIN_AUDIT_SECRET_LENGTH
from audit.keys import parse_keys as parse_audit_keys
from config.settings.base import *  # noqa: F403
from config.settings.base import (
    OPERATOR_MFA_REQUIRED,
    OTP_TOTP_THROTTLE_FACTOR,
    STRIPE_API_BASE,
    STRIPE_PUSH_ENABLED,
    STRIPE_WEBHOOK_SECRET,
    env,
)


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

# Stripe half-configured would fail silently: nothing pushed, synced or reconciled
# (pushes off), every webhook rejected (no secret), or no TLS floor (a plain-http base; the
# gateway's TLS 1.2 floor only exists on https). Each stops the process here.
_stripe_disabled_on_purpose = env.bool("STRIPE_DISABLED_I_KNOW", default=False)
if _stripe_disabled_on_purpose and STRIPE_PUSH_ENABLED:
    raise ImproperlyConfigured(
        "STRIPE_DISABLED_I_KNOW=true contradicts STRIPE_PUSH_ENABLED=true: remove STRIPE_DISABLED_I_KNOW."
    )
if not STRIPE_PUSH_ENABLED:
    if not _stripe_disabled_on_purpose:
        raise ImproperlyConfigured(
            "STRIPE_PUSH_ENABLED must be true in production: with it off nothing is pushed to Stripe, "
            "synced or reconciled. To run without pushes on purpose, set STRIPE_DISABLED_I_KNOW=true."
        )
    warnings.warn(
        "STRIPE_DISABLED_I_KNOW=true: Stripe pushes are off; finalized invoices, voids and customer "
        "changes are not sent to Stripe and reconciliation does not run.",
        RuntimeWarning,
        stacklevel=1,
    )

_required("STRIPE_WEBHOOK_SECRET")
if not STRIPE_WEBHOOK_SECRET.strip().startswith("whsec_") or "dev_only" in STRIPE_WEBHOOK_SECRET:
    raise ImproperlyConfigured(
        "STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret from Stripe (whsec_…), not the development value."
    )

if STRIPE_API_BASE:  # empty: stripe-python's own https://api.stripe.com
    _base = urlsplit(STRIPE_API_BASE)
    if _base.scheme != "https" or not _base.hostname or STRIPE_API_BASE.strip() != STRIPE_API_BASE:
        raise ImproperlyConfigured(
            "STRIPE_API_BASE must be an https:// URL in production (or empty for Stripe's own): "
            "over plain HTTP there is no TLS, so no TLS floor."
        )
# dj-stripe's own pointer at another Stripe (base.py derives it from STRIPE_API_BASE) is not
# needed here: billing.stripe.gateway.configure_module_client points stripe-python's module
# client, which dj-stripe uses, at STRIPE_API_BASE at start-up. Without it, dj-stripe's
# check (djstripe.W002) stays quiet under `check --deploy`.
globals().pop("STRIPE_API_HOST", None)

# Tests only: lets Stripe calls run inside a database transaction (billing/stripe/gateway.py
# reads it under the test settings only). Never in production, not even by mistake.
if env.bool("STRIPE_ALLOW_IN_TRANSACTION", default=False) or globals().get("STRIPE_ALLOW_IN_TRANSACTION"):
    raise ImproperlyConfigured(
        "STRIPE_ALLOW_IN_TRANSACTION is a test-only escape hatch: unset it in production "
        "(Stripe is never called inside a database transaction)."
    )

# Operator MFA (HIPAA 164.312(d), config/mfa/): the console never runs on a password alone,
# and wrong codes are always throttled.
if not OPERATOR_MFA_REQUIRED:
    raise ImproperlyConfigured(
        "OPERATOR_MFA_REQUIRED must be true in production: every operator needs a second factor for the console."
    )
if OTP_TOTP_THROTTLE_FACTOR <= 0:
    raise ImproperlyConfigured(
        "OPERATOR_MFA_THROTTLE_FACTOR must be 1 or more in production: 0 turns off the throttling of wrong codes."
    )

# /metrics (ops/views.py): off when METRICS_TOKEN is empty; when set, long enough that
# guessing it is hopeless (it is compared in constant time, and travels over HTTPS only).
if 0 < len(env.str("METRICS_TOKEN", default="")) < 32:
    raise ImproperlyConfigured("METRICS_TOKEN must be 32+ random characters (or empty: no /metrics).")
# Load-balancer probes: /health/live and /health/ready are answered before the HTTPS
# redirect and admit HEALTH_CHECK_HOSTS besides ALLOWED_HOSTS (ops/middleware.py); they
# carry no cookie, token or data. Everything else, /metrics included, keeps both checks.

# The audit chain's HMAC keys (audit/keys.py): without one, anyone with database access
# could rewrite and re-hash the chain's tail undetectably.
_audit_keys = parse_audit_keys(_required("AUDIT_HMAC_KEYS"))
for _key_id, _secret in _audit_keys:
    if len(_secret) < MIN_AUDIT_SECRET_LENGTH or DEV_AUDIT_KEY_MARKER.encode() in _secret:
        raise ImproperlyConfigured(
            f"AUDIT_HMAC_KEYS: the secret of key {_key_id!r} must be {MIN_AUDIT_SECRET_LENGTH}+ random "
            "characters, not the development key."
        )
if globals().get("AUDIT_RESET_HWM_ON_FLUSH"):
    raise ImproperlyConfigured("AUDIT_RESET_HWM_ON_FLUSH is a test-only setting: unset it in production.")

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

# --- Emails (notifications/, spec §12) ------------------------------------------------
# The offices' billing emails (invoices, failed payments, suspension) must really leave:
# no console or in-memory backend, an SMTP server from EMAIL_URL or EMAIL_HOST, TLS to it
# (STARTTLS or implicit) unless it is a relay on this host, and a real sender address.
from config.settings.base import DEFAULT_FROM_EMAIL, EMAIL_BACKEND  # noqa: E402

if EMAIL_BACKEND != "django.core.mail.backends.smtp.EmailBackend" or not globals().get("EMAIL_HOST"):
    raise ImproperlyConfigured(
        "EMAIL_URL (e.g. smtp+tls://user:password@smtp.example.com:587) or EMAIL_HOST must name an SMTP "
        "server in production: the offices' billing emails would otherwise never leave."
    )
if not (globals().get("EMAIL_USE_TLS") or globals().get("EMAIL_USE_SSL")) and globals()["EMAIL_HOST"] not in (
    "localhost",
    "127.0.0.1",
    "::1",
):
    raise ImproperlyConfigured(
        "EMAIL_URL must use TLS in production (smtp+tls:// or smtps://, or EMAIL_USE_TLS / EMAIL_USE_SSL): "
        "only a relay on this host may be reached without it."
    )
_sender_domain = DEFAULT_FROM_EMAIL.strip().rstrip(">").rpartition("@")[2].lower()
if (
    not env.str("DEFAULT_FROM_EMAIL", default="").strip()
    or _sender_domain in ("", "localhost")
    or (_sender_domain.endswith(".example"))
):
    raise ImproperlyConfigured("DEFAULT_FROM_EMAIL must be set in production: the sender of the offices' emails.")
