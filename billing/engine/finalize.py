"""Finalization (spec §6.1, §7): lines equal the history, the minimum adjustment, the
gapless number, `open` or `paid`, then the push seam (after commit, never inside)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from audit.services import audit_record
from billing.engine.labels import minimum_adjustment_label, setup_fee_label
from billing.engine.lines import reconcile_patient_lines, refresh_totals
from billing.engine.office import AdvanceStats
from billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
    PushState,
)
from billing.seam import request_push
from offices.models import CollectionMethod, Office


def create_setup_fee_invoice(*, office: Office, plan: Plan, stats: AdvanceStats) -> Invoice:
    """At most once per office (a unique constraint), finalized and pushed at once (§7)."""
    invoice = Invoice.objects.create(
        office=office, kind=InvoiceKind.ONE_OFF, plan=plan, currency=plan.currency, is_setup_fee=True
    )
    LineItem.objects.create(
        invoice=invoice,
        kind=LineKind.SETUP_FEE,
        description=setup_fee_label(plan),
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
            description=minimum_adjustment_label(plan),
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
    stats.finalized_ids.append(invoice.pk)
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
