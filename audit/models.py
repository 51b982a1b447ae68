"""The domain audit trail (spec §9): append-only, hash-chained, sealed in order."""

from __future__ import annotations

from django.db import models


class ActorType(models.TextChoices):
    USER = "user"
    SYSTEM = "system"
    STRIPE = "stripe"


class Outcome(models.TextChoices):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


class AuditEvent(models.Model):
    """One audited action. Content is written once; `seq`/`prev_hash`/`entry_hash` are
    written once more by the sealer (triggers refuse any other UPDATE, and DELETE on
    PostgreSQL). No PHI, no secrets, no card data is ever put in here."""

    ts = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_label = models.CharField(max_length=150, blank=True, default="")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    office_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    reason = models.TextField(blank=True, default="")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True, default="")
    task_id = models.CharField(max_length=255, blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    # Chain fields, set by the sealer (audit.services.audit_seal) in commit order.
    seq = models.BigIntegerField(null=True, blank=True, unique=True)
    prev_hash = models.CharField(max_length=64, null=True, blank=True)
    entry_hash = models.CharField(max_length=64, null=True, blank=True, unique=True)
    # The id of the HMAC key that sealed it (audit/keys.py); "legacy" for entries sealed with
    # the unkeyed SHA-256 before keys existed (migration 0005 marks them, rewriting nothing).
    key_id = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["office_id", "ts"]),
            models.Index(fields=["actor_type", "actor_id"]),
            # The sealer's queue: small and always current, unlike the unique index on seq
            # whose NULL entries linger until VACUUM.
            models.Index(fields=["id"], condition=models.Q(seq__isnull=True), name="audit_unsealed_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq or '-'} {self.action} {self.target_type}:{self.target_id} ({self.outcome})"


class AuditChainHead(models.Model):
    """A single row: the last sealed entry. Locking it serializes sealers."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    entry_hash = models.CharField(max_length=64, default="0" * 64)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"head seq {self.seq}"


class AuditAnchor(models.Model):
    """The head hash copied out of the chain periodically, so a truncated tail is detectable."""

    seq = models.BigIntegerField()
    entry_hash = models.CharField(max_length=64)
    anchored_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"anchor seq {self.seq} at {self.anchored_at:%Y-%m-%d %H:%M}"


# What an auditor sees of an entry, in reading order: the hashed content between the chain
# position and the hashes. One list for the admin, the API and the hash's canonical form.
CONTENT_FIELDS: tuple[str, ...] = (
    "ts",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "office_id",
    "outcome",
    "reason",
    "source_ip",
    "request_id",
    "task_id",
    "data",
)
DISPLAY_FIELDS: tuple[str, ...] = ("seq", *CONTENT_FIELDS, "prev_hash", "entry_hash", "key_id")
# What the sealer writes (the only columns the application's database role may UPDATE).
SEAL_FIELDS: tuple[str, ...] = ("seq", "prev_hash", "entry_hash", "key_id")
HEAD_UPDATE_FIELDS: tuple[str, ...] = ("seq", "entry_hash", "updated_at")
