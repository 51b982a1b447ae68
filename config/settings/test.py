"""Test settings: the suite runs on SQLite by default, on PostgreSQL when DATABASE_URL says so."""

from config.settings.base import *  # noqa: F403
from config.settings.base import env

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast hashing, tests only
CELERY_TASK_ALWAYS_EAGER = False
STRIPE_PUSH_ENABLED = False  # tests that push start their own localstripe and enable it
# Tests never reach the real Stripe by accident: a closed local port answers at once.
# Tests that talk to Stripe start their own localstripe and pass its URL.
# (.ci/run's contract step exports the URL of the localstripe it starts.)
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="") or "http://127.0.0.1:9"
# Operator MFA off here, so the tests that log operators in with force_login keep working;
# the MFA tests (config/mfa/tests/) turn it on with override_settings. Not read from the
# environment on purpose: a developer's .env must not change the suite.
OPERATOR_MFA_REQUIRED = False

# Stripe pacing (billing/stripe/pacing.py) is off: the suite's localstripes are not Stripe,
# and CI's CACHE_URL is Redis, so every test process would share one 22/s budget. The
# pacing tests (billing/tests/stripe/test_pacing*.py) turn it on with their own settings.
STRIPE_RATE_LIMIT_ENABLED = env.bool(
    "STRIPE_RATE_LIMIT_ENABLED", default=False
)  # the pacing tests' worker processes turn it on

# Emails: no after-commit dispatch messages to a broker; tests call the dispatcher themselves.
NOTIFICATIONS_DISPATCH_AFTER_COMMIT = False


# --- Audit chain (issue 12) ---
# A fixed, non-secret key: tests that rotate keys override it.
AUDIT_HMAC_KEYS = "test:dev-only-audit-hmac-key-for-tests-0123456789"
# Django's test flush truncates the audit tables between transactional tests; the
# high-water mark sequence (which outlives TRUNCATE on purpose) is reset with it, or the
# next test would see a truncated chain. Never in production (production.py refuses it).
AUDIT_RESET_HWM_ON_FLUSH = True
