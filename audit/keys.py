"""The keys of the audit chain's HMAC (spec §9, HIPAA 164.312(c)(1)).

`AUDIT_HMAC_KEYS` = `"k2:<secret>,k1:<secret>"`: key id, colon, secret; the first pair is
the current key (new entries are sealed with it), the others only verify entries sealed
before a rotation. Each entry stores the id of the key that sealed it (`AuditEvent.key_id`);
entries sealed before keys existed carry `legacy` and verify with the old unkeyed SHA-256.

Read from settings at each call, so a rotation takes effect at the next process start (and
tests can override it)."""

from __future__ import annotations

import re
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

LEGACY_KEY_ID = "legacy"
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
MIN_SECRET_LENGTH = 32
DEV_KEY_MARKER = "dev-only"


class UnknownAuditKey(LookupError):
    """An entry names a key id that is not configured (removed too early, or forged)."""


@lru_cache(maxsize=8)
def _parsed(value: str) -> tuple[tuple[str, bytes], ...]:
    return tuple(parse_keys(value))


def parse_keys(value: str) -> list[tuple[str, bytes]]:
    """`"k2:secret,k1:secret"` → [("k2", b"secret"), ("k1", b"secret")], current first."""
    keys: list[tuple[str, bytes]] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        key_id, sep, secret = part.partition(":")
        key_id, secret = key_id.strip(), secret.strip()
        if not sep or not KEY_ID_RE.match(key_id) or not secret:
            raise ImproperlyConfigured(
                "AUDIT_HMAC_KEYS must be comma-separated <key id>:<secret> pairs, key ids of "
                "letters, digits, '_', '.', '-' (at most 32)."
            )
        if key_id == LEGACY_KEY_ID:
            raise ImproperlyConfigured(f"AUDIT_HMAC_KEYS: the key id {LEGACY_KEY_ID!r} is reserved.")
        if any(key_id == known for known, _ in keys):
            raise ImproperlyConfigured(f"AUDIT_HMAC_KEYS names the key id {key_id!r} twice.")
        keys.append((key_id, secret.encode()))
    if not keys:
        raise ImproperlyConfigured("AUDIT_HMAC_KEYS must name at least one key (the current one first).")
    return keys


def configured_keys() -> list[tuple[str, bytes]]:
    return list(_parsed(getattr(settings, "AUDIT_HMAC_KEYS", "")))


def current_key() -> tuple[str, bytes]:
    """The key new entries are sealed with."""
    return configured_keys()[0]


def key_for(key_id: str) -> bytes:
    for known, secret in configured_keys():
        if known == key_id:
            return secret
    raise UnknownAuditKey(key_id)
