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

# --- Audit chain (issue 12) ---
# A fixed, non-secret key: tests that rotate keys override it.
AUDIT_HMAC_KEYS = "test:dev-only-audit-hmac-key-for-tests-0123456789"
# Django's test flush truncates the audit tables between transactional tests; the
# high-water mark sequence (which outlives TRUNCATE on purpose) is reset with it, or the
# next test would see a truncated chain. Never in production (production.py refuses it).
AUDIT_RESET_HWM_ON_FLUSH = True
