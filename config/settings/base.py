"""Settings shared by every environment. Everything that differs comes from the environment."""

from datetime import timedelta
from pathlib import Path

import environ

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
    "audit",
    "offices",
    "patients",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.outages.DatabaseOutageMiddleware",  # database down: JSON 503 + Retry-After (config/outages.py)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
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
