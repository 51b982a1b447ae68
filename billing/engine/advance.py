"""The billing engine: open, finalize and advance an office's cycles (spec §4–§7).

Every function here runs inside a transaction that holds the office's lock
(`lock_office`). They are set-based: opening or finalizing a cycle is a handful of
queries whatever the number of patients."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, Sum
from django.utils import timezone

from audit.services import audit_record
from billing.cycles import next_boundary_after, zone
from billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
    PlanChange,
    PlanChangeKind,
    PushState,
)
from billing.push import request_push
from offices.models import CollectionMethod, Office, SubscriptionStatus
from patients.models import ActivationInterval

ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass
class AdvanceStats:
    finalized: int = 0
    opened: int = 0
    lines: int = 0
    amount_finalized_cents: int = 0
    # After a step: the office's next boundary (None when the subscription ended).
    next_boundary: datetime | None = None

    def add(self, other: AdvanceStats) -> None:
        self.finalized += other.finalized
        self.opened += other.opened
        self.lines += other.lines
        self.amount_finalized_cents += other.amount_finalized_cents


def lock_office(office_id: int) -> Office:
    """The office's billing lock: every billing write for an office takes it first."""
    return Office.objects.select_for_update().get(pk=office_id)


# --- Reads that the engine needs -------------------------------------------------------


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
    return (
        Invoice.objects.select_related("plan")
        .filter(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
        .first()
    )


def is_active_at(*, patient_id: int, instant: datetime) -> bool:
    return (
        ActivationInterval.objects.filter(patient_id=patient_id, activated_at__lte=instant)
        .filter(Q(deactivated_at__isnull=True) | Q(deactivated_at__gt=instant))
        .exists()
    )


# --- Patient lines, set-based ----------------------------------------------------------

# Patient-id sets of one office, written non-correlated so that the planner always starts
# from the (office, activated_at) index whatever its statistics say.
_ACTIVE_AT = """SELECT patient_id FROM patients_activationinterval
    WHERE office_id = %s AND activated_at <= %s AND (deactivated_at IS NULL OR deactivated_at > %s)"""
_BILLABLE_IN = """SELECT patient_id FROM patients_activationinterval
    WHERE office_id = %s AND activated_at < %s AND (deactivated_at IS NULL OR deactivated_at > %s)"""
_LABEL = {"recurring": "Active patient ", "activation": "Patient activated during the period "}


def _dt(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def insert_recurring_lines(*, invoice: Invoice, unit_cents: int) -> int:
    """One `recurring` line per patient active at the instant C.start (one INSERT … SELECT)."""
    start = _dt(invoice.period_start)  # type: ignore[arg-type]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_lineitem
                (invoice_id, kind, patient_id, patient_ref, description, quantity,
                 unit_amount_cents, amount_cents, created_at)
            SELECT %s, 'recurring', p.id, p.billing_ref, 'Active patient ' || p.billing_ref, 1, %s, %s, %s
            FROM patients_activationinterval a
            JOIN patients_patient p ON p.id = a.patient_id
            WHERE a.office_id = %s AND a.activated_at <= %s AND (a.deactivated_at IS NULL OR a.deactivated_at > %s)
            """,
            [invoice.pk, unit_cents, unit_cents, _dt(timezone.now()), invoice.office_id, start, start],
        )
        return cursor.rowcount


def reconcile_patient_lines(*, invoice: Invoice, unit_cents: int) -> tuple[int, int]:
    """Make the draft's patient lines equal the billable patients of [start, end) computed
    from the history (spec §5): remove lines of patients never active in the period, add
    the missing ones, and give every line the kind the history gives (recurring iff active
    at the instant C.start). Five statements; all but the insert are no-ops as a rule.
    Returns (added, removed)."""
    office, start, end = invoice.office_id, _dt(invoice.period_start), _dt(invoice.period_end)  # type: ignore[arg-type]
    active_at_start = [office, start, start]
    billable = [office, end, start]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            DELETE FROM billing_lineitem
            WHERE invoice_id = %s AND patient_id IS NOT NULL AND patient_id NOT IN ({_BILLABLE_IN})
            """,  # noqa: S608 - only our own constant fragments are formatted in
            [invoice.pk, *billable],
        )
        removed = cursor.rowcount
        cursor.execute(
            f"""
            INSERT INTO billing_lineitem
                (invoice_id, kind, patient_id, patient_ref, description, quantity,
                 unit_amount_cents, amount_cents, created_at)
            SELECT %s, 'activation', p.id, p.billing_ref, '{_LABEL["activation"]}' || p.billing_ref, 1, %s, %s, %s
            FROM patients_patient p
            WHERE p.id IN ({_BILLABLE_IN})
              AND p.id NOT IN (SELECT patient_id FROM billing_lineitem WHERE invoice_id = %s AND patient_id IS NOT NULL)
            """,  # noqa: S608 - only our own constant fragments are formatted in
            [invoice.pk, unit_cents, unit_cents, _dt(timezone.now()), *billable, invoice.pk],
        )
        added = cursor.rowcount
        # Kinds from the history. Lines are inserted as `activation` above; a kind can also
        # disagree when a draft opened at the very instant a patient was deactivated.
        for kind, other, test in (("recurring", "activation", "IN"), ("activation", "recurring", "NOT IN")):
            cursor.execute(
                f"""
                UPDATE billing_lineitem SET kind = %s, description = %s || patient_ref
                WHERE invoice_id = %s AND kind = %s AND patient_id {test} ({_ACTIVE_AT})
                """,  # noqa: S608 - only our own constant fragments are formatted in
                [kind, _LABEL[kind], invoice.pk, other, *active_at_start],
            )
    return added, removed


def refresh_totals(invoice: Invoice) -> int:
    """Set the totals from the lines (one query); returns the line count."""
    agg = LineItem.objects.filter(invoice=invoice).aggregate(s=Sum("amount_cents"), n=Count("id"))
    invoice.subtotal_cents = invoice.total_cents = agg["s"] or 0  # taxes are out of scope for v1
    return int(agg["n"])


# --- Opening and finalizing ------------------------------------------------------------


def open_cycle(*, office: Office, start: datetime, stats: AdvanceStats) -> Invoice:
    """Open the draft of the cycle starting at `start` with a `recurring` line for every
    patient active at that instant (history, not "now"); bill the setup fee if this is the
    office's first cycle ever (spec §6, §7)."""
    assert office.billing_cycle_anchor_date is not None
    tz = zone(office.timezone)
    end = next_boundary_after(office.billing_cycle_anchor_date, start, tz)
    plan = plan_in_force(office=office, cycle_start=start)
    first_cycle_ever = not Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE).exists()
    invoice = Invoice.objects.create(
        office=office,
        kind=InvoiceKind.CYCLE,
        plan=plan,
        currency=plan.currency,
        period_start=start,
        period_end=end,
    )
    lines = insert_recurring_lines(invoice=invoice, unit_cents=plan.per_patient_cents)
    if lines:
        invoice.subtotal_cents = invoice.total_cents = lines * plan.per_patient_cents
        Invoice.objects.filter(pk=invoice.pk).update(
            subtotal_cents=invoice.subtotal_cents, total_cents=invoice.total_cents
        )
    stats.next_boundary = end
    fields = []
    if office.current_plan_id != plan.pk:
        office.current_plan = plan
        fields.append("current_plan")
    if office.pending_plan_id is not None and office.pending_plan_id == plan.pk:
        office.pending_plan = None
        fields.append("pending_plan")
    if fields:
        office.save(update_fields=[*fields, "updated_at"])
    stats.opened += 1
    stats.lines += lines
    audit_record(
        action="invoice.opened",
        target=invoice,
        office_id=office.pk,
        data={
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            "plan": plan.code,
            "line_count": lines,
            "subtotal_cents": invoice.subtotal_cents,
        },
    )
    if first_cycle_ever and plan.setup_fee_cents > 0:
        create_setup_fee_invoice(office=office, plan=plan, stats=stats)
    return invoice


def create_setup_fee_invoice(*, office: Office, plan: Plan, stats: AdvanceStats) -> Invoice:
    """At most once per office (a unique constraint), finalized and pushed at once (§7)."""
    invoice = Invoice.objects.create(
        office=office, kind=InvoiceKind.ONE_OFF, plan=plan, currency=plan.currency, is_setup_fee=True
    )
    LineItem.objects.create(
        invoice=invoice,
        kind=LineKind.SETUP_FEE,
        description=f"Setup fee — {plan.name}",
        quantity=1,
        unit_amount_cents=plan.setup_fee_cents,
        amount_cents=plan.setup_fee_cents,
    )
    finalize_invoice(invoice=invoice, office=office, stats=stats)
    return invoice


def finalize_cycle(*, invoice: Invoice, office: Office, stats: AdvanceStats, apply_minimum: bool = True) -> Invoice:
    """Finalize C (spec §6.1): lines equal the billable patients of C; a minimum
    adjustment if the plan minimum is above their sum (not for a cut cycle); then number."""
    plan = invoice.plan
    assert plan is not None
    added, _removed = reconcile_patient_lines(invoice=invoice, unit_cents=plan.per_patient_cents)
    stats.lines += added
    refresh_totals(invoice)
    if apply_minimum and plan.minimum_cents > invoice.subtotal_cents:
        shortfall = plan.minimum_cents - invoice.subtotal_cents
        LineItem.objects.create(
            invoice=invoice,
            kind=LineKind.MINIMUM_ADJUSTMENT,
            description=f"Monthly minimum adjustment ({plan.name})",
            quantity=1,
            unit_amount_cents=shortfall,
            amount_cents=shortfall,
        )
        stats.lines += 1
        refresh_totals(invoice)
    return finalize_invoice(invoice=invoice, office=office, stats=stats)


def next_invoice_number(now: datetime) -> str:
    """Gapless per UTC year across all offices: the year's row is locked until commit."""
    year = now.astimezone(UTC).year
    InvoiceNumberSequence.objects.bulk_create([InvoiceNumberSequence(year=year)], ignore_conflicts=True)
    seq = InvoiceNumberSequence.objects.select_for_update().get(year=year)
    seq.last_value += 1
    seq.save(update_fields=["last_value"])
    return f"{settings.INVOICE_NUMBER_PREFIX}-{year}-{seq.last_value:06d}"


def finalize_invoice(*, invoice: Invoice, office: Office, stats: AdvanceStats) -> Invoice:
    """Freeze totals, number, `open` (or `paid` when the total is 0), then the push seam."""
    now = timezone.now()
    line_count = refresh_totals(invoice)
    invoice.number = next_invoice_number(now)
    invoice.finalized_at = now
    if invoice.total_cents == 0:
        invoice.status = InvoiceStatus.PAID
        invoice.paid_at = now
        invoice.push_state = PushState.NOT_REQUIRED
        invoice.due_at = now
    else:
        invoice.status = InvoiceStatus.OPEN
        invoice.push_state = PushState.PENDING
        invoice.due_at = (
            now
            if office.collection_method == CollectionMethod.CHARGE_AUTOMATICALLY
            else now + timedelta(days=office.days_until_due)
        )
    invoice.save()
    stats.finalized += 1
    stats.amount_finalized_cents += invoice.total_cents
    audit_record(
        action="invoice.finalized",
        target=invoice,
        office_id=office.pk,
        data={
            "number": invoice.number,
            "kind": invoice.kind,
            "status": invoice.status,
            "total_cents": invoice.total_cents,
            "currency": invoice.currency,
            "line_count": line_count,
        },
    )
    if invoice.push_state == PushState.PENDING:
        request_push(invoice.pk)
    return invoice


# --- Advancing through boundaries ------------------------------------------------------


def advance_one(*, office: Office, as_of: datetime, stats: AdvanceStats) -> bool:
    """Process the office's next boundary at or before `as_of`, if any. True if it did."""
    if office.subscription_status == SubscriptionStatus.TRIALING:
        assert office.trial_ends_at is not None
        if office.trial_ends_at <= as_of:
            office.subscription_status = SubscriptionStatus.ACTIVE
            office.save(update_fields=["subscription_status", "updated_at"])
            audit_record(action="subscription.trial_ended", target=office, office_id=office.pk)
            open_cycle(office=office, start=office.trial_ends_at, stats=stats)
            return True
        return False
    draft = current_draft(office)
    if draft is None or draft.period_end is None or draft.period_end > as_of:
        return False
    finalize_cycle(invoice=draft, office=office, stats=stats)
    if office.cancel_at_period_end:
        office.subscription_status = SubscriptionStatus.CANCELED
        office.canceled_at = draft.period_end
        office.cancel_at_period_end = False
        office.pending_plan = None
        office.save(
            update_fields=["subscription_status", "canceled_at", "cancel_at_period_end", "pending_plan", "updated_at"]
        )
        audit_record(
            action="subscription.canceled",
            target=office,
            office_id=office.pk,
            data={"at": draft.period_end.isoformat(), "mode": "period_end"},
        )
    else:
        open_cycle(office=office, start=draft.period_end, stats=stats)
    return True


def advance_all(*, office: Office, as_of: datetime) -> AdvanceStats:
    """Catch up every boundary up to `as_of`, in order (inside the caller's transaction)."""
    stats = AdvanceStats()
    while advance_one(office=office, as_of=as_of, stats=stats):
        pass
    return stats
