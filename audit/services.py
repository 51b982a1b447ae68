"""Writing the audit trail: `audit_record` appends, `audit_seal` chains in commit order.

Appending takes no global lock (billing transactions of different offices never wait on
each other); the sealer, run right after each commit and every minute by beat, gives
sealed entries a gapless `seq` and `entry_hash = SHA-256(canonical JSON || prev_hash)`
under a short lock on the single head row (spec §9)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from audit.context import current_source
from audit.models import CONTENT_FIELDS, ActorType, AuditAnchor, AuditChainHead, AuditEvent, Outcome

logger = logging.getLogger("audit")

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


def compute_entry_hash(*, event: AuditEvent, seq: int, prev_hash: str) -> str:
    body = json.dumps(
        {"seq": seq, **canonical_content(event)}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(body.encode() + prev_hash.encode()).hexdigest()


def _lock_head() -> AuditChainHead:
    AuditChainHead.objects.bulk_create([AuditChainHead(id=1)], ignore_conflicts=True)
    return AuditChainHead.objects.select_for_update().get(pk=1)


def audit_seal(*, batch_size: int = 2000) -> int:
    """Chain every committed, unsealed entry in id order. Safe to run concurrently."""
    sealed = 0
    while True:
        with transaction.atomic():
            head = _lock_head()
            pending = list(AuditEvent.objects.filter(seq__isnull=True).order_by("id")[:batch_size])
            if not pending:
                return sealed
            seq, prev = head.seq, head.entry_hash
            for event in pending:
                seq += 1
                event.seq, event.prev_hash = seq, prev
                event.entry_hash = prev = compute_entry_hash(event=event, seq=seq, prev_hash=prev)
            AuditEvent.objects.bulk_update(pending, ["seq", "prev_hash", "entry_hash"], batch_size=500)
            head.seq, head.entry_hash = seq, prev
            head.save(update_fields=["seq", "entry_hash", "updated_at"])
            sealed += len(pending)
        if len(pending) < batch_size:
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
    logger.info("audit anchor seq=%s hash=%s", head.seq, head.entry_hash)
    return anchor
