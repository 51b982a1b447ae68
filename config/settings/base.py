"""Settings shared by every environment. Everything that differs comes from the environment."""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"  # SQLite files, the embedded broker's folders, localstripe's store
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="dev-only-insecure-key-change-me-0123456789abcdef")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

INSTALLED_APPS = [
    "unfold",  # the operator console's theme (django-unfold); before django.contrib.admin
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "auditlog",
    "djstripe",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "django_celery_beat",
    "django_otp",  # operator MFA (config/mfa/): TOTP devices and recovery codes
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "audit",
    "offices",
    "patients",
    "billing",
    "compliance",
    "ops",  # health checks and metrics (issue 12, item 6)
    "notifications",  # emails to the office's billing contact (spec §12)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.outages.DatabaseOutageMiddleware",  # database down: JSON 503 + Retry-After (config/outages.py)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified() (operator MFA)
    "config.mfa.middleware.OperatorMfaMiddleware",  # /admin/ needs a verified staff user
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "audit.middleware.AuditContextMiddleware",
    # django-auditlog's middleware, given our validated client IP and request id.
    "audit.middleware.AuditlogMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and IMMEDIATE transactions: concurrent writers wait instead of failing with
    # "database is locked" (select_for_update is a no-op on SQLite; writes serialize here).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 30}
    )
    # The test database is a file (pytest --reuse-db keeps it); two suites run side by side
    # each name their own with TEST_SQLITE_PATH.
    DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str(
        "TEST_SQLITE_PATH", default=str(VAR_DIR / "test.sqlite3")
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that does not answer fails a request in seconds (a JSON 503), never hangs it.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5)
    )
# Connections kept open between requests (seconds; 0 closes each at the end of its
# request), checked before reuse so a connection the server dropped is replaced.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
GUARDIAN_RAISE_403 = False
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous requests hold no object roles

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- Billing --------------------------------------------------------------------------
INVOICE_NUMBER_PREFIX = env("INVOICE_NUMBER_PREFIX", default="INV")
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=14)
BILLING_DEFAULT_TIMEZONE = env("BILLING_DEFAULT_TIMEZONE", default="America/New_York")
BILLING_DEFAULT_CURRENCY = env.str("BILLING_DEFAULT_CURRENCY", default="usd").lower()
BILLING_RUN_CHUNK_SIZE = env.int("BILLING_RUN_CHUNK_SIZE", default=200)
# A run still running this long after it started has lost a chunk: it is marked failed.
BILLING_RUN_STALL_AFTER_MINUTES = env.int("BILLING_RUN_STALL_AFTER_MINUTES", default=120)

# Where Stripe-hosted payment-method pages send the office back.
BILLING_PORTAL_RETURN_URL = env.str("BILLING_PORTAL_RETURN_URL", default="http://127.0.0.1:8000/")
BILLING_VENDOR = {
    "name": env("BILLING_VENDOR_NAME", default="Clinic Cloud, Inc."),
    "address": env("BILLING_VENDOR_ADDRESS", default="100 Example Street, Springfield"),
    "email": env("BILLING_VENDOR_EMAIL", default="billing@vendor.example"),
}

# --- Stripe (secrets only from the environment; never stored in the database) --------
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="sk_test_localstripe000000000000000000")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_WEBHOOK_SECRET_NEXT = env.str("STRIPE_WEBHOOK_SECRET_NEXT", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")  # localstripe in development and tests
# Where operators open an office's customer in Stripe (the console links its id); empty: no link.
STRIPE_DASHBOARD_URL = env.str("STRIPE_DASHBOARD_URL", default="")
STRIPE_CONNECT_TIMEOUT_SECONDS = env.float("STRIPE_CONNECT_TIMEOUT_SECONDS", default=5.0)
STRIPE_READ_TIMEOUT_SECONDS = env.float("STRIPE_READ_TIMEOUT_SECONDS", default=30.0)
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
# Push finalized invoices to Stripe after commit (a Celery task). Off in the test settings:
# tests that exercise Stripe turn it on against their own localstripe.
STRIPE_PUSH_ENABLED = env.bool("STRIPE_PUSH_ENABLED", default=False)
# Webhooks (billing/stripe/webhooks.py): signatures older or newer than this are refused, and so
# are bodies above this size (Stripe's events are a few kB).
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env.int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", default=300)
STRIPE_WEBHOOK_MAX_BODY_BYTES = env.int("STRIPE_WEBHOOK_MAX_BODY_BYTES", default=1024 * 1024)
# Reconciliation (billing/stripe/reconcile.py): open invoices plus those changed in this many days.
STRIPE_RECONCILE_DAYS = env.int("STRIPE_RECONCILE_DAYS", default=35)

# dj-stripe mirrors Stripe. Its key settings are derived from STRIPE_SECRET_KEY; it never
# stores a key or webhook secret (see billing/stripe/djstripe_adapter.py).
STRIPE_LIVE_MODE = STRIPE_SECRET_KEY.startswith("sk_live_")
STRIPE_TEST_SECRET_KEY = "" if STRIPE_LIVE_MODE else STRIPE_SECRET_KEY
STRIPE_LIVE_SECRET_KEY = STRIPE_SECRET_KEY if STRIPE_LIVE_MODE else ""
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_USE_NATIVE_JSONFIELD = True
if STRIPE_API_BASE:
    STRIPE_API_HOST = STRIPE_API_BASE

REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=env.int("API_TOKEN_TTL_HOURS", default=12)),
    "AUTO_REFRESH": False,
    "TOKEN_LIMIT_PER_USER": 10,
    "AUTH_HEADER_PREFIX": "Token",
}

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Tokens first: their 401 carries a challenge. Stored hashed, with an expiry (knox).
        "config.authentication.TokenAuthentication",  # knox's, hardened; tells auditlog the actor
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Counted in the shared cache (CACHES below), keyed on the validated client IP or user.
    "DEFAULT_THROTTLE_CLASSES": ["config.authentication.ApiRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "login": env.str("API_LOGIN_RATE", default="10/min"),  # per client IP, token endpoint
        "api": env.str("API_RATE", default="600/min"),  # per user (per IP when anonymous)
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Clinic billing API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two choice sets share the field name "kind": name them (no hashed names, no warning).
    "ENUM_NAME_OVERRIDES": {
        "InvoiceKindEnum": "billing.models.InvoiceKind",
        "LineKindEnum": "billing.models.LineKind",
    },
}
# Idle timeout for sessions (HIPAA automatic logoff): 15 minutes without a request.
SESSION_COOKIE_AGE = env.int("SESSION_IDLE_SECONDS", default=900)
SESSION_SAVE_EVERY_REQUEST = True

# Proxies of our own in front of the app (0: none, the client IP is REMOTE_ADDR; N: the Nth
# X-Forwarded-For entry from the right). Never more than there really are: every entry left
# of our proxies' is client-controlled. See audit/middleware.py.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# Shared by every process (throttle counters). Default: Django's database cache, which
# works across processes with no server (its table comes from `manage.py createcachetable`;
# the test runner creates it). Production: CACHE_URL=redis://host:6379/1.
CACHES = {"default": env.cache_url_config(env.str("CACHE_URL", default="") or "dbcache://django_cache")}

# django-auditlog (model diffs; the domain AuditEvent chain is the record of authority):
# its IP comes from audit.middleware.AuditlogMiddleware, its correlation id is our request id.
AUDITLOG_DISABLE_REMOTE_ADDR = False
AUDITLOG_CID_GETTER = "audit.middleware.current_request_id"
AUDITLOG_DISABLE_ON_RAW_SAVE = True

# --- Operator console (django-unfold) --------------------------------------------------
LOGIN_URL = "/admin/login/"
LOGIN_REDIRECT_URL = "/admin/"
UNFOLD = {
    "SITE_TITLE": "Billing console",
    "SITE_HEADER": "Billing console",
    "SITE_SUBHEADER": "Operators",
    "SITE_URL": "/admin/",  # "View site" leads back to the console, not to a bare 404
    "SITE_SYMBOL": "receipt_long",
    "SITE_FAVICONS": [{"rel": "icon", "type": "image/svg+xml", "href": "/static/console/favicon.svg"}],
    "SHOW_VIEW_ON_SITE": False,
    "SHOW_HISTORY": True,
    "DASHBOARD_CALLBACK": "billing.console.dashboard_callback",
    "SIDEBAR": {"show_search": True, "show_all_applications": False, "navigation": "config.console.sidebar_navigation"},
}

# --- Celery ---------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "celery-broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # A broker that accepts the connection but never answers (a half-dead server, a
    # partition): requests never publish in their own thread (billing/stripe/publisher.py),
    # and these timeouts keep the publishing thread, beat and workers from waiting forever.
    # Whatever is not enqueued (a push, a void, a customer sync) stays marked in the
    # database and is re-enqueued by the hourly catch-up. Workers poll with a 1 s BRPOP,
    # so the socket timeout stays above it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_timeout": env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=2.5),
        "socket_connect_timeout": env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=2.5),
    }
    CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=2.5)
# One quick retry of a failed publish, then the error (logged by the on-commit hook).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    # Hourly: offices have different anchors and time zones, so boundaries fall at every hour.
    "billing-run-hourly": {"task": "billing.tasks.billing_run_tick", "schedule": 3600.0},
    "audit-seal": {"task": "audit.tasks.audit_seal_task", "schedule": 60.0},
    # Dunning: send_invoice invoices past their due date, grace period, suspension, recovery.
    "billing-dunning-hourly": {"task": "billing.tasks.dunning_tick", "schedule": 3600.0},
    # Reconciliation with Stripe (reports and audits mismatches, never fixes them).
    "stripe-reconcile-daily": {"task": "billing.tasks.reconcile_stripe_task", "schedule": 86400.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Operator MFA (config/mfa/, django-otp) ---------------------------------------------
# Staff need a second factor (TOTP, or a single-use recovery code) for every console page.
# On by default (local, production); production refuses to start with it off; the test
# settings turn it off for the tests that log operators in with force_login.
OPERATOR_MFA_REQUIRED = env.bool("OPERATOR_MFA_REQUIRED", default=True)
OTP_TOTP_ISSUER = env.str("OPERATOR_MFA_ISSUER", default="Billing console")  # the name in the app
# Wrong codes: each failure doubles the wait before the next try (factor x 1, 2, 4, 8 ... s).
# 0 would turn throttling off: production refuses that.
OTP_TOTP_THROTTLE_FACTOR = env.int("OPERATOR_MFA_THROTTLE_FACTOR", default=1)
OTP_STATIC_THROTTLE_FACTOR = OTP_TOTP_THROTTLE_FACTOR
OPERATOR_MFA_RECOVERY_CODES = 10

# --- compliance: access reviews, evidence export, retention (issue 12, items 3, 4, 9) ---
# An information-system activity review (45 CFR 164.308(a)(1)(ii)(D)) is due this many
# days after the last one; the console's overview flags it as overdue after that.
ACCESS_REVIEW_INTERVAL_DAYS = env.int("ACCESS_REVIEW_INTERVAL_DAYS", default=31)
# Daily: report what is past the six-year retention (164.316(b)(2)), delete only expired
# sessions and API tokens (compliance/services.py:retention_sweep).
CELERY_BEAT_SCHEDULE["compliance-retention-daily"] = {
    "task": "compliance.tasks.retention_sweep_task",
    "schedule": 86400.0,
}

# --- Health and metrics (ops/, issue 12 item 6) ---------------------------------------
# /health/ready is red when the last successful hourly billing-run tick is older than this
# (beat or the worker stopped), or when a committed audit entry has waited longer than the
# second for its seal (the sealer stopped). Both also show at the top of the console.
HEALTH_TICK_MAX_AGE_MINUTES = env.int("HEALTH_TICK_MAX_AGE_MINUTES", default=120)
HEALTH_AUDIT_UNSEALED_MAX_AGE_MINUTES = env.int("HEALTH_AUDIT_UNSEALED_MAX_AGE_MINUTES", default=10)
# Seconds /health/ready waits for the broker (its own connection, connect and each read).
HEALTH_CHECK_TIMEOUT_SECONDS = env.float("HEALTH_CHECK_TIMEOUT_SECONDS", default=2.0)
# Hosts admitted for /health/live and /health/ready only, besides ALLOWED_HOSTS: for load
# balancers that probe with the target's IP as Host (ops/middleware.py). Empty by default.
HEALTH_CHECK_HOSTS = env.list("HEALTH_CHECK_HOSTS", default=[])
# /metrics answers only `Authorization: Bearer <METRICS_TOKEN>`; empty: /metrics is a 404.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# A Redis cache that accepts connections but never answers would hang every throttled
# request (and the readiness check) without a socket timeout.
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    _cache_timeout = env.float("CACHE_SOCKET_TIMEOUT", default=2.5)
    CACHES["default"].setdefault("OPTIONS", {}).setdefault("socket_timeout", _cache_timeout)
    CACHES["default"]["OPTIONS"].setdefault("socket_connect_timeout", _cache_timeout)
# Probes first (ops/middleware.py); django-prometheus's request metrics around the rest: its
# "after" half just outside the database-outage middleware, so it counts the 503 clients get.
MIDDLEWARE = [
    "ops.middleware.HealthCheckMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    *MIDDLEWARE,
]
_outages = "config.outages.DatabaseOutageMiddleware"
MIDDLEWARE.insert(
    MIDDLEWARE.index(_outages) if _outages in MIDDLEWARE else len(MIDDLEWARE),
    "django_prometheus.middleware.PrometheusAfterMiddleware",
)

# --- Deployment (docs/deploy.md) ---------------------------------------------------------
# One beat at a time: beat holds a PostgreSQL advisory lock while it schedules; a second
# beat stands by and retries every BEAT_LOCK_RETRY_SECONDS (config/beat_lock.py).
CELERY_BEAT_SCHEDULER = "config.beat_lock:LockedDatabaseScheduler"
BEAT_LOCK_RETRY_SECONDS = env.float("BEAT_LOCK_RETRY_SECONDS", default=5.0)
# Where `manage.py collectstatic` puts the static files the TLS proxy serves at /static/.
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default="") or VAR_DIR / "static")
# Rotating DJANGO_SECRET_KEY without logging everyone out: the previous key(s) here, comma
# separated, still verify sessions and signed values until removed (docs/deploy.md).
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])

# --- Stripe pacing (issue 10: billing/stripe/pacing.py, docs/stripe.md "Pacing") ---------
# Every Stripe request takes a slot from a rate limit shared by every worker on every
# machine (Redis), reads and writes apart, per account and mode. Defaults: 90% of Stripe's
# documented limits (100/s live, 25/s test mode), rounded down.
STRIPE_RATE_LIMIT_ENABLED = env.bool("STRIPE_RATE_LIMIT_ENABLED", default=True)
# Empty (as in .env.example) means the default for the key's mode.
STRIPE_WRITE_RATE_PER_SECOND = float(
    env.str("STRIPE_WRITE_RATE_PER_SECOND", default="") or (90 if STRIPE_LIVE_MODE else 22)
)
STRIPE_READ_RATE_PER_SECOND = float(
    env.str("STRIPE_READ_RATE_PER_SECOND", default="") or (90 if STRIPE_LIVE_MODE else 22)
)
if STRIPE_WRITE_RATE_PER_SECOND <= 0 or STRIPE_READ_RATE_PER_SECOND <= 0:
    raise ImproperlyConfigured("STRIPE_WRITE_RATE_PER_SECOND and STRIPE_READ_RATE_PER_SECOND must be above 0.")
# Where the shared buckets live. Empty: CACHE_URL if it is Redis, else CELERY_BROKER_URL if
# it is Redis, else none — each process then paces itself (right on one box, one worker).
_redis_urls = [env.str("CACHE_URL", default=""), CELERY_BROKER_URL]
STRIPE_RATE_LIMIT_REDIS_URL = env.str("STRIPE_RATE_LIMIT_REDIS_URL", default="") or next(
    (url for url in _redis_urls if url.startswith(("redis://", "rediss://", "unix://"))), ""
)
# A request waits at most this long for its slot; beyond it nothing is sent and the call
# fails as transient (the push task retries with backoff).
STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS = env.float("STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS", default=10.0)
# How often one call retries a 429 itself (Retry-After, else exponential backoff with
# jitter) before failing as transient. `Stripe-Should-Retry: false` is never retried.
STRIPE_RATE_LIMITED_RETRIES = env.int("STRIPE_RATE_LIMITED_RETRIES", default=3)

# --- Emails (notifications/, spec §12) ------------------------------------------------
# SMTP from EMAIL_URL (django-environ: smtp+tls://user:password@host:587 for STARTTLS,
# smtp+ssl://…:465 for implicit TLS) or from EMAIL_HOST / EMAIL_PORT / EMAIL_HOST_USER / EMAIL_HOST_PASSWORD /
# EMAIL_USE_TLS / EMAIL_USE_SSL. With neither, messages go to the console (development and
# `make run`; they are also in the operator console). Production refuses to start without SMTP.
EMAIL_URL = env.str("EMAIL_URL", default="")
EMAIL_HOST = env.str("EMAIL_HOST", default="")
if EMAIL_URL:
    vars().update(env.email_url_config(EMAIL_URL))
elif EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env.int("EMAIL_PORT", default=587)
    EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
    EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
    EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=True)
    EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)  # seconds; a server that never answers fails the attempt
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default=BILLING_VENDOR["email"])
# Warn an office this many days before it would be suspended (past due + BILLING_GRACE_DAYS).
BILLING_SUSPENSION_WARNING_DAYS = env.int("BILLING_SUSPENSION_WARNING_DAYS", default=3)
# Attempts before a message the server keeps refusing for now (4xx, down) is marked failed.
NOTIFICATIONS_MAX_ATTEMPTS = env.int("NOTIFICATIONS_MAX_ATTEMPTS", default=10)
# A message in `sending` this long: its process died around the hand-over; reported, never resent.
NOTIFICATIONS_SENDING_STUCK_MINUTES = env.int("NOTIFICATIONS_SENDING_STUCK_MINUTES", default=15)
# Also ask for a dispatch right after the commit of a relevant audit entry (beat is the guarantee).
NOTIFICATIONS_DISPATCH_AFTER_COMMIT = env.bool("NOTIFICATIONS_DISPATCH_AFTER_COMMIT", default=True)
CELERY_BEAT_SCHEDULE["notifications-dispatch"] = {
    "task": "notifications.tasks.notifications_dispatch_task",
    "schedule": float(env.int("NOTIFICATIONS_DISPATCH_SECONDS", default=300)),
}

# --- Audit chain: HMAC keys, time tolerance, legacy boundary (issue 12; audit/keys.py) ---
# AUDIT_HMAC_KEYS: "<key id>:<secret>,<older id>:<secret>", the current key first; older keys
# only verify entries sealed before a rotation. The default is a fixed, non-secret
# development key; production refuses to start with it or without the variable.
AUDIT_HMAC_KEYS = env.str("AUDIT_HMAC_KEYS", default="dev:dev-only-audit-hmac-key-not-a-secret-0123456789")
# How far an entry's ts may lie before the latest sealed entry's (or after now) before the
# sealer records it as a finding and the verifier reports it.
AUDIT_TS_TOLERANCE_SECONDS = env.int("AUDIT_TS_TOLERANCE_SECONDS", default=300)
# The last seq sealed with the unkeyed (legacy) scheme, as migration audit 0005 logged it:
# the verifier then refuses legacy entries past it. Unset: legacy entries are accepted
# only as the chain's prefix (never after a keyed entry).
_audit_legacy_max_seq = env.str("AUDIT_LEGACY_MAX_SEQ", default="").strip()
AUDIT_LEGACY_MAX_SEQ: int | None = int(_audit_legacy_max_seq) if _audit_legacy_max_seq else None
