"""Opening and advancing an office's cycles (spec §4, §6): open the next draft from the
history, and process the office's boundaries in order up to an instant.

Every function here runs inside a transaction that holds the office's lock
(`lock_office`)."""

from __future__ import annotations

from datetime import datetime

from audit.services import audit_record
from billing.engine.cycles import next_boundary_after, zone
from billing.engine.finalize import create_setup_fee_invoice, finalize_cycle
from billing.engine.lines import insert_recurring_lines
from billing.engine.office import AdvanceStats, current_draft, plan_in_force
from billing.models import Invoice, InvoiceKind
from offices.models import Office, SubscriptionStatus


def open_cycle(*, office: Office, start: datetime, stats: AdvanceStats) -> Invoice:
    """Open the draft of the cycle starting at `start` with a `recurring` line for every
    patient active at that instant (history, not "now"); bill the setup fee if this is the
    office's first cycle ever (spec §6, §7)."""
    assert office.billing_cycle_anchor_date is not None
    tz = zone(office.timezone)
    end = next_boundary_after(office.billing_cycle_anchor_date, start, tz)
    plan = plan_in_force(office=office, cycle_start=start)
    # Decided by what ever opened, not by the invoices left: a same-instant immediate
    # cancel discards its draft, and the office's first cycle has still opened (spec §7).
    first_cycle_ever = office.first_cycle_opened_at is None
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
    if first_cycle_ever:
        office.first_cycle_opened_at = start
        fields.append("first_cycle_opened_at")
    if office.current_plan_id != plan.pk:
        office.current_plan = plan
        fields.append("current_plan")
    if office.pending_plan_id is not None and office.pending_plan_id == plan.pk:
        office.pending_plan = None
        fields.append("pending_plan")
    if fields:
        office.save(update_fields=[*fields, "updated_at"])
    stats.opened += 1
    stats.opened_ids.append(invoice.pk)
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
