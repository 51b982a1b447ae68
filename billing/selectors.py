"""Billing reads: invoices, payment status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from django.conf import settings
from django.db.models import Count, Max, Q, QuerySet, Sum

from billing.models import PATIENT_LINE_KINDS, Invoice, InvoiceStatus, LineItem
from offices.models import Office


def invoices_for_office(*, office: Office, status: str | None = None, kind: str | None = None) -> QuerySet[Invoice]:
    """An office's invoices, newest first, optionally filtered by status and kind (spec §10)."""
    qs = Invoice.objects.filter(office=office).order_by("-created_at", "-id")
    if status:
        qs = qs.filter(status=status)
    if kind:
        qs = qs.filter(kind=kind)
    return qs


@dataclass(frozen=True)
class PaymentStatus:
    """What `payment-status` answers: subscription state, outstanding and past-due cents (spec §8, §10)."""

    subscription_status: str
    outstanding_cents: int
    past_due_cents: int
    last_payment_at: datetime | None
    currency: str


def payment_status(*, office: Office) -> PaymentStatus:
    """Computed from local invoices: open totals (drafts excluded), the past-due part, and
    the last payment (zero-total invoices are not payments)."""
    agg = Invoice.objects.filter(office=office).aggregate(
        outstanding=Sum("total_cents", filter=Q(status=InvoiceStatus.OPEN)),
        past_due=Sum("total_cents", filter=Q(status=InvoiceStatus.OPEN, past_due_at__isnull=False)),
        last_paid=Max("paid_at", filter=Q(status=InvoiceStatus.PAID, total_cents__gt=0)),
    )
    return PaymentStatus(
        subscription_status=office.subscription_status,
        outstanding_cents=agg["outstanding"] or 0,
        past_due_cents=agg["past_due"] or 0,
        last_payment_at=agg["last_paid"],
        currency=office_currency(office),
    )


def office_currency(office: Office) -> str:
    """The currency an office is billed in: its plan's, else BILLING_DEFAULT_CURRENCY."""
    return office.current_plan.currency if office.current_plan else settings.BILLING_DEFAULT_CURRENCY


class PatientLineGroup(TypedDict):
    kind: str
    unit_amount_cents: int
    n: int


def patient_line_groups(invoice: Invoice) -> list[PatientLineGroup]:
    """The invoice's patient lines grouped as the office and Stripe read them: one row per
    (kind, unit price) with its count `n`, in a stable order (the PDF's summary, the push's
    items)."""
    rows = (
        LineItem.objects.filter(invoice=invoice, kind__in=PATIENT_LINE_KINDS)
        .values("kind", "unit_amount_cents")
        .annotate(n=Count("id"))
        .order_by("kind", "unit_amount_cents")
    )
    return [PatientLineGroup(kind=r["kind"], unit_amount_cents=r["unit_amount_cents"], n=r["n"]) for r in rows]
