"""Celery entry points. Tasks take ids, never objects, and are safe to run twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.context import audit_source
from billing.models import BillingRun, Invoice, PushState
from billing.runs import billing_run_finish_if_done, billing_run_process, billing_run_start, offices_due
from billing.stripe_gateway import Transient
from billing.stripe_push import invoice_push


@shared_task(bind=True)
def billing_run_tick(self: Any) -> int | None:
    """Hourly (beat): find the due offices and fan out one task per chunk of them."""
    with audit_source(task_id=str(self.request.id or "")):
        as_of = timezone.now()
        if settings.STRIPE_PUSH_ENABLED:
            enqueue_pending_pushes()
        due = offices_due(as_of=as_of)
        if not due:
            return None
        size = max(1, settings.BILLING_RUN_CHUNK_SIZE)
        chunks = [due[i : i + size] for i in range(0, len(due), size)]
        run = billing_run_start(
            as_of=as_of, trigger="beat", office_ids=None, offices_due_count=len(due), chunks=len(chunks)
        )
        for chunk in chunks:
            billing_run_chunk.delay(run.pk, chunk)
        return run.pk


@shared_task(bind=True, acks_late=True)
def billing_run_chunk(self: Any, run_id: int, office_ids: list[int]) -> None:
    with audit_source(task_id=str(self.request.id or "")):
        run = BillingRun.objects.get(pk=run_id)
        billing_run_process(run=run, office_ids=office_ids)
        billing_run_finish_if_done(run_id)


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=(Transient,),
    retry_backoff=5,
    retry_backoff_max=600,  # stays under Redis' visibility timeout (3600 s)
    retry_jitter=True,
    max_retries=8,
)
def invoice_push_task(self: Any, invoice_id: int) -> str | None:
    """Push one finalized invoice to Stripe; retried with backoff on transient failures
    (the same idempotency keys each time). What is still pending afterwards is picked up
    by the next hourly run."""
    with audit_source(task_id=str(self.request.id or "")):
        invoice = invoice_push(invoice_id=invoice_id)
        return invoice.stripe_invoice_id


def enqueue_pending_pushes(*, older_than: timedelta = timedelta(minutes=10), limit: int = 5000) -> int:
    """Re-enqueue pushes that no task finished (a broker outage, retries exhausted)."""
    cutoff = timezone.now() - older_than
    ids = list(
        Invoice.objects.filter(push_state=PushState.PENDING, finalized_at__lt=cutoff)
        .order_by("finalized_at")
        .values_list("pk", flat=True)[:limit]
    )
    for invoice_id in ids:
        invoice_push_task.delay(invoice_id)
    return len(ids)


@shared_task(bind=True)
def dunning_tick(self: Any) -> dict[str, int]:
    """Hourly (beat): send_invoice invoices past their due date become past due; offices
    past due longer than the grace period are suspended; paid-up offices are active again."""
    from dataclasses import asdict

    from billing.dunning import dunning_run

    with audit_source(task_id=str(self.request.id or "")):
        return asdict(dunning_run())


@shared_task(bind=True, acks_late=True, autoretry_for=(Transient,), retry_backoff=60, max_retries=5)
def reconcile_stripe_task(self: Any) -> int | None:
    """Daily (beat): compare local invoices with Stripe; report and audit mismatches
    (never fixes them). Skipped where Stripe is not in use (STRIPE_PUSH_ENABLED off)."""
    from billing.reconcile import reconcile_stripe

    if not settings.STRIPE_PUSH_ENABLED:
        return None
    with audit_source(task_id=str(self.request.id or "")):
        return len(reconcile_stripe().mismatches)
