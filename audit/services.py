"""Writing the audit trail: `audit_record` appends, `audit_seal` chains in commit order.

Appending takes no global lock (billing transactions of different offices never wait on
each other); the sealer, run right after each commit and every minute by beat, gives
sealed entries a gapless `seq` and `entry_hash = HMAC-SHA256(key, key_id || canonical JSON ||
prev_hash)` under a short lock on the single head row (spec §9). The key comes from the
environment (audit/keys.py), so someone with database access alone cannot re-hash a
rewritten tail; `key_id` on each entry lets keys rotate. Entries sealed before keys existed
keep their unkeyed SHA-256 and verify as `legacy`.

The sealer also refuses to let time run backwards along the chain: an entry whose `ts` lies
more than `AUDIT_TS_TOLERANCE_SECONDS` before the latest sealed one (or as far in the
future) is still sealed (nothing is lost) but recorded as a finding, itself an audit entry
(`audit.entry_backdated`), and `verify_audit_chain` reports it.

Anchors go to the table and to the application log (`audit.anchor seq=… hash=… ts=…` on
the logger `audit.anchor`), which lives outside the database; on PostgreSQL a sequence
that TRUNCATE does not reset (`audit_chain_hwm`) keeps the highest sealed seq."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from audit.context import current_source
from audit.keys import LEGACY_KEY_ID, current_key, key_for
from audit.models import (
    CONTENT_FIELDS,
    HEAD_UPDATE_FIELDS,
    SEAL_FIELDS,
    ActorType,
    AuditAnchor,
    AuditChainHead,
    AuditEvent,
    Outcome,
)

logger = logging.getLogger("audit")
anchor_logger = logging.getLogger("audit.anchor")

HWM_SEQUENCE = "audit_chain_hwm"  # PostgreSQL only (migration 0005)
BACKDATED_ACTION = "audit.entry_backdated"

GENESIS_HASH = "0" * 64
HASHED_FIELDS = CONTENT_FIELDS


def _actor_fields(actor: Any, actor_type: str | None) -> tuple[str, str, str]:
    if actor is not None and getattr(actor, "is_authenticated", False):
        return ActorType.USER, str(actor.pk), actor.get_username()
    return actor_type or ActorType.SYSTEM, "", ""


def audit_record(
    *,
    action: str,
    actor: Any = None,
    actor_type: str | None = None,
    target: Any = None,
    target_type: str = "",
    target_id: str | int | None = None,
    office_id: int | None = None,
    outcome: str = Outcome.SUCCESS,
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit entry (spec §9: who, what, when, where, outcome — never PHI).

    `actor` is a user (or None for `system`; pass actor_type="stripe" for webhooks).
    `target` is a model instance; its class name and pk are recorded, nothing else."""
    a_type, a_id, a_label = _actor_fields(actor, actor_type)
    if target is not None:
        target_type = target_type or target._meta.label
        target_id = target.pk
    source = current_source()
    event = AuditEvent.objects.create(
        ts=timezone.now(),
        actor_type=a_type,
        actor_id=a_id,
        actor_label=a_label,
        action=action,
        target_type=target_type,
        target_id="" if target_id is None else str(target_id),
        office_id=office_id,
        outcome=outcome,
        reason=reason,
        source_ip=source.source_ip,
        request_id=source.request_id,
        task_id=source.task_id,
        data=data or {},
    )
    _seal_after_commit()
    return event


def _seal_after_commit_callback() -> None:
    try:
        audit_seal()
    except Exception:  # the periodic sealer catches up; never fail work already committed
        logger.exception("audit seal after commit failed; the periodic sealer will retry")


_deferred: ContextVar[bool] = ContextVar("audit_seal_deferred", default=False)


@contextlib.contextmanager
def deferred_sealing() -> Iterator[None]:
    """Within this block, entries are not sealed after each commit but once at the end
    (bulk work such as a billing run: one seal instead of one per office)."""
    token = _deferred.set(True)
    try:
        yield
    finally:
        _deferred.reset(token)
        if not connection.in_atomic_block:
            _seal_after_commit_callback()


def _seal_after_commit() -> None:
    """One seal per outermost transaction, however many entries it wrote (a rolled-back
    transaction drops its on_commit callbacks, so nothing is left scheduled)."""
    if _deferred.get():
        return
    if not connection.in_atomic_block:
        _seal_after_commit_callback()
        return
    if any(entry[1] is _seal_after_commit_callback for entry in connection.run_on_commit):
        return
    transaction.on_commit(_seal_after_commit_callback)


def canonical_content(event: AuditEvent) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = getattr(event, name)
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        values[name] = value
    return values


def compute_entry_hash(*, event: AuditEvent, seq: int, prev_hash: str, key_id: str | None = None) -> str:
    """The entry's hash at `seq` after `prev_hash`: HMAC-SHA256 with the key `key_id` (default:
    the entry's own `key_id`), or the unkeyed SHA-256 of the `legacy` scheme. Raises
    `audit.keys.UnknownAuditKey` for a key id that is not configured."""
    key_id = event.key_id if key_id is None else key_id
    body = json.dumps(
        {"seq": seq, **canonical_content(event)}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    if key_id == LEGACY_KEY_ID:
        return hashlib.sha256(body.encode() + prev_hash.encode()).hexdigest()
    message = key_id.encode() + b"\n" + body.encode() + prev_hash.encode()
    return hmac.new(key_for(key_id), message, hashlib.sha256).hexdigest()


def ts_tolerance() -> timedelta:
    return timedelta(seconds=settings.AUDIT_TS_TOLERANCE_SECONDS)


def _lock_head() -> AuditChainHead:
    AuditChainHead.objects.bulk_create([AuditChainHead(id=1)], ignore_conflicts=True)
    return AuditChainHead.objects.select_for_update().get(pk=1)


def _chain_ts(head: AuditChainHead) -> datetime | None:
    """The latest `ts` along the sealed chain, ignoring entries dated in the future."""
    if head.seq == 0:
        return None
    horizon = timezone.now() + ts_tolerance()
    latest = AuditEvent.objects.filter(seq__isnull=False, ts__lte=horizon).aggregate(top=Max("ts"))["top"]
    return latest


def _record_backdated(event: AuditEvent, *, chain_ts: datetime | None, future: bool) -> None:
    """A finding, audited: the entry was sealed (nothing is lost) but its time is not credible."""
    why = "lies in the future" if future else "goes back before the chain's latest entry"
    logger.warning("audit entry id=%s seq=%s %s (ts=%s)", event.pk, event.seq, why, event.ts.isoformat())
    audit_record(
        action=BACKDATED_ACTION,
        actor_type=ActorType.SYSTEM,
        target_type="audit.AuditEvent",
        target_id=event.pk,
        outcome=Outcome.FAILURE,
        reason=f"its timestamp {why} by more than {settings.AUDIT_TS_TOLERANCE_SECONDS} s",
        data={
            "seq": event.seq,
            "ts": event.ts.astimezone(UTC).isoformat(),
            "chain_ts": chain_ts.astimezone(UTC).isoformat() if chain_ts is not None else None,
            "tolerance_seconds": settings.AUDIT_TS_TOLERANCE_SECONDS,
        },
    )


def _advance_hwm(seq: int) -> None:
    """After the commit, raise the high-water mark sequence to `seq` (never lower it).

    A sequence is not rolled back with a transaction and TRUNCATE leaves it alone, so it
    outlives a truncated chain; setting it after the commit keeps a rolled-back seal from
    claiming entries that never were."""
    if connection.vendor != "postgresql":
        return

    def advance() -> None:
        if connection.in_atomic_block:
            # Still inside a transaction (a test running captured on-commit callbacks): the
            # seal is not durable yet, and a sequence would not roll back with it.
            return
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT setval('{HWM_SEQUENCE}', GREATEST(%s, (SELECT last_value FROM {HWM_SEQUENCE})))",  # noqa: S608
                [seq],
            )

    transaction.on_commit(advance)


def audit_seal(*, batch_size: int = 2000) -> int:
    """Chain every committed, unsealed entry in id order with the current HMAC key (spec §9).
    Safe to run concurrently. Backdated or future-dated entries are sealed and recorded as
    `audit.entry_backdated` findings."""
    sealed = 0
    key_id, _ = current_key()  # fails before anything is written when no key is configured
    tolerance = ts_tolerance()
    while True:
        with transaction.atomic():
            head = _lock_head()
            pending = list(AuditEvent.objects.filter(seq__isnull=True).order_by("id")[:batch_size])
            if not pending:
                return sealed
            chain_ts = _chain_ts(head)
            horizon = timezone.now() + tolerance
            flagged: list[tuple[AuditEvent, datetime | None, bool]] = []
            seq, prev = head.seq, head.entry_hash
            for event in pending:
                seq += 1
                event.seq, event.prev_hash, event.key_id = seq, prev, key_id
                event.entry_hash = prev = compute_entry_hash(event=event, seq=seq, prev_hash=prev)
                if event.ts > horizon:
                    flagged.append((event, chain_ts, True))
                elif chain_ts is not None and event.ts < chain_ts - tolerance:
                    flagged.append((event, chain_ts, False))
                else:
                    chain_ts = event.ts if chain_ts is None else max(chain_ts, event.ts)
            AuditEvent.objects.bulk_update(pending, list(SEAL_FIELDS), batch_size=500)
            head.seq, head.entry_hash = seq, prev
            head.save(update_fields=list(HEAD_UPDATE_FIELDS))
            for event, reference, future in flagged:
                _record_backdated(event, chain_ts=reference, future=future)
            _advance_hwm(seq)
            sealed += len(pending)
        if len(pending) < batch_size and not flagged:
            return sealed


def audit_anchor() -> AuditAnchor | None:
    """Copy the head hash out of the chain (an anchor row and the application log)."""
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is None or head.seq == 0:
        return None
    last = AuditAnchor.objects.order_by("-seq").first()
    if last is not None and last.seq == head.seq:
        return last
    anchor = AuditAnchor.objects.create(seq=head.seq, entry_hash=head.entry_hash)
    log_anchor(anchor)
    return anchor


def log_anchor(anchor: AuditAnchor) -> None:
    """The anchor as one structured line on the `audit.anchor` logger: the copy that lives
    outside the database (`verify_audit_chain --anchors-log` reads it back)."""
    ts = anchor.anchored_at.astimezone(UTC).isoformat(timespec="seconds")
    anchor_logger.info("audit.anchor seq=%d hash=%s ts=%s", anchor.seq, anchor.entry_hash, ts)
