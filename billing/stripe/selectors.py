"""Reads about the Stripe side of billing (no Stripe call here)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from django.db.models import CharField, Count, Q, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone

from audit.models import AuditEvent
from billing.models import BillingRun, BillingRunChunk, Invoice, InvoiceKind, PushState

RATE_WINDOW = timedelta(seconds=60)


class PushProgress(TypedDict):
    pending: int  # waiting for (or in) their push, retries included
    pushed: int
    failed: int  # not retried (the PHI guard, Stripe-Should-Retry: false, a permanent error): an operator's
    total: int  # pending + pushed + failed: the run's invoices meant for Stripe
    rate: float  # invoices pushed per second over the last minute


def run_invoices(run: BillingRun) -> QuerySet[Invoice]:
    """The invoices a billing run finalized. Invoices carry no link to their run, so this is
    the run's offices (its chunks, or its office filter) and time span: cycle and setup-fee
    invoices finalized between the run's start and its end (now while it runs). Operators'
    one-off invoices are never a run's; a cycle an office's own catch-up finalized inside
    that span (a subscription change mid-run) would be counted with it."""
    office_ids: set[int] = set(run.office_filter or [])
    for ids in BillingRunChunk.objects.filter(run=run).values_list("office_ids", flat=True):
        office_ids.update(int(i) for i in ids or [])
    span = Q(finalized_at__gte=run.started_at)
    if run.finished_at is not None:
        span &= Q(finalized_at__lte=run.finished_at)
    return Invoice.objects.filter(
        span, Q(kind=InvoiceKind.CYCLE) | Q(is_setup_fee=True), office_id__in=sorted(office_ids)
    )


def run_push_progress(run: BillingRun, *, now: datetime | None = None) -> PushProgress:
    """Where the Stripe pushes of a run's finalized invoices stand (issue 10: pushes are
    paced, so a run's invoices reach Stripe over minutes): counts by push state, and the
    push rate of the last minute from the `invoice.pushed` audit entries."""
    invoices = run_invoices(run)
    counts = invoices.aggregate(
        pending=Count("pk", filter=Q(push_state=PushState.PENDING)),
        pushed=Count("pk", filter=Q(push_state=PushState.PUSHED)),
        failed=Count("pk", filter=Q(push_state=PushState.FAILED)),
    )
    now = now or timezone.now()
    recent = AuditEvent.objects.filter(
        action="invoice.pushed",
        target_type=Invoice._meta.label,
        ts__gt=now - RATE_WINDOW,
        ts__lte=now,
        target_id__in=invoices.annotate(key=Cast("pk", CharField())).values("key"),
    ).count()
    pending, pushed, failed = int(counts["pending"]), int(counts["pushed"]), int(counts["failed"])
    return PushProgress(
        pending=pending,
        pushed=pushed,
        failed=failed,
        total=pending + pushed + failed,
        rate=round(recent / RATE_WINDOW.total_seconds(), 2),
    )
