"""An office's billing state as the engine reads it: its lock, the plan in force at a
boundary, its open draft, and whether a patient was active at an instant (spec §5).

Every billing write for an office takes `lock_office` first, inside the caller's
transaction; one lock order everywhere: the office, then (when finalizing) the year's
invoice-number row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q

from billing.models import Invoice, InvoiceKind, InvoiceStatus, Plan, PlanChange, PlanChangeKind
from offices.models import Office
from patients.models import ActivationInterval

# Two events of one patient's history are never at the same instant: the later one moves
# on by this much (activation after a deactivation in the same microsecond, spec §5).
ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass
class AdvanceStats:
    """What one or more engine steps did; the run adds these up per office and chunk."""

    finalized: int = 0
    opened: int = 0
    lines: int = 0
    amount_finalized_cents: int = 0
    # After a step: the office's next boundary (None when the subscription ended).
    next_boundary: datetime | None = None
    # The invoices these steps finalized and opened: what a run reports is what it did,
    # never what a concurrent run did to the same offices.
    finalized_ids: list[int] = field(default_factory=list)
    opened_ids: list[int] = field(default_factory=list)

    def add(self, other: AdvanceStats) -> None:
        self.finalized += other.finalized
        self.opened += other.opened
        self.lines += other.lines
        self.amount_finalized_cents += other.amount_finalized_cents
        self.finalized_ids += other.finalized_ids
        self.opened_ids += other.opened_ids


def lock_office(office_id: int) -> Office:
    """The office's billing lock: every billing write for an office takes it first."""
    return Office.objects.select_for_update().get(pk=office_id)


def plan_in_force(*, office: Office, cycle_start: datetime) -> Plan:
    """The latest subscription at or before C.start, replaced by the latest plan change
    requested strictly before C.start (and after that subscription) — spec §5. One query:
    the history is read newest first until the subscription it belongs to."""
    history = (
        PlanChange.objects.filter(office=office, requested_at__lte=cycle_start)
        .select_related("plan")
        .order_by("-requested_at", "-id")
    )
    change: PlanChange | None = None
    for entry in history.iterator(chunk_size=20):
        if entry.kind == PlanChangeKind.SUBSCRIBE:
            return (change or entry).plan
        if change is None and entry.requested_at < cycle_start:
            change = entry
    raise LookupError(f"office {office.pk} has no subscription at {cycle_start.isoformat()}")


def current_draft(office: Office) -> Invoice | None:
    """The office's open cycle draft, if any (at most one, a constraint)."""
    return (
        Invoice.objects.select_related("plan")
        .filter(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
        .first()
    )


def is_active_at(*, patient_id: int, instant: datetime) -> bool:
    """True if the patient's history has them active at `instant` (half-open intervals, spec §5)."""
    return (
        ActivationInterval.objects.filter(patient_id=patient_id, activated_at__lte=instant)
        .filter(Q(deactivated_at__isnull=True) | Q(deactivated_at__gt=instant))
        .exists()
    )
