"""Celery tasks that speak to Stripe. Each takes an id, is safe to run twice (the same
idempotency keys every time), and retries transient failures with backoff.

Task names are fixed to the names they had before the Stripe code moved here: messages
already queued, and django-celery-beat's rows, name tasks by these strings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.context import audit_source
from billing.models import Invoice, PushState
from billing.stripe.gateway import Gateway, Transient
from billing.stripe.push import customer_ensure, customer_sync, invoice_push, invoice_void_sync, push_claim_free
from offices.models import Office

# Backoff stays under Redis' visibility timeout (3600 s).
RETRY = {"autoretry_for": (Transient,), "retry_backoff": 5, "retry_backoff_max": 600, "max_retries": 8}


@shared_task(name="billing.tasks.invoice_push_task", bind=True, acks_late=True, retry_jitter=True, **RETRY)
def invoice_push_task(self: Any, invoice_id: int) -> str | None:
    """Push one finalized invoice to Stripe (spec §8). What is still pending afterwards is
    picked up by the next hourly run (`enqueue_pending_pushes`)."""
    with audit_source(task_id=str(self.request.id or "")):
        invoice = invoice_push(invoice_id=invoice_id)
        return invoice.stripe_invoice_id


def enqueue_pending_pushes(*, older_than: timedelta = timedelta(minutes=10), limit: int = 5000) -> int:
    """Re-enqueue pushes that no task finished (a broker outage, retries exhausted); not
    those in flight now, nor those the PHI guard refused (`failed`, shown to operators)."""
    cutoff = timezone.now() - older_than
    ids = list(
        Invoice.objects.filter(push_claim_free(), push_state=PushState.PENDING, finalized_at__lt=cutoff)
        .order_by("finalized_at")
        .values_list("pk", flat=True)[:limit]
    )
    for invoice_id in ids:
        invoice_push_task.delay(invoice_id)
    return len(ids)


def enqueue_pending_customer_syncs(*, older_than: timedelta = timedelta(minutes=10), limit: int = 5000) -> int:
    """Re-enqueue the name/email syncs that no task finished (spec §8: nothing is lost to
    a broker outage): offices whose change mark is still set and that have a customer."""
    cutoff = timezone.now() - older_than
    ids = list(
        Office.objects.filter(customer_identity_changed_at__lt=cutoff, payment_provider_customer_id__isnull=False)
        .exclude(payment_provider_customer_id="")
        .order_by("customer_identity_changed_at")
        .values_list("pk", flat=True)[:limit]
    )
    for office_id in ids:
        customer_sync_task.delay(office_id)
    return len(ids)


@shared_task(name="billing.stripe.tasks.customer_ensure_task", bind=True, acks_late=True, **RETRY)
def customer_ensure_task(self: Any, office_id: int) -> str:
    """The office's Stripe customer, looked up or created once, right after it subscribes."""
    with audit_source(task_id=str(self.request.id or "")):
        return customer_ensure(office=Office.objects.get(pk=office_id), gateway=Gateway())


@shared_task(name="billing.stripe_push.customer_sync_task", bind=True, acks_late=True, **RETRY)
def customer_sync_task(self: Any, office_id: int) -> None:
    """Carry an office's name and billing email to its Stripe customer."""
    with audit_source(task_id=str(self.request.id or "")):
        customer_sync(office_id=office_id)


@shared_task(name="billing.stripe_push.invoice_void_sync_task", bind=True, acks_late=True, **RETRY)
def invoice_void_sync_task(self: Any, invoice_id: int) -> None:
    """Carry a local void to Stripe, so that Stripe never collects a voided invoice."""
    with audit_source(task_id=str(self.request.id or "")):
        invoice_void_sync(invoice_id=invoice_id)


@shared_task(
    name="billing.tasks.reconcile_stripe_task",
    bind=True,
    acks_late=True,
    autoretry_for=(Transient,),
    retry_backoff=60,
    max_retries=5,
)
def reconcile_stripe_task(self: Any) -> int | None:
    """Daily (beat): compare local invoices with Stripe; report and audit mismatches
    (never fixes them). Skipped where Stripe is not in use (STRIPE_PUSH_ENABLED off)."""
    from billing.stripe.reconcile import reconcile_stripe

    if not settings.STRIPE_PUSH_ENABLED:
        return None
    with audit_source(task_id=str(self.request.id or "")):
        return len(reconcile_stripe().mismatches)


@shared_task(name="billing.stripe.tasks.stripe_event_mirror_task", bind=True, acks_late=True)
def stripe_event_mirror_task(self: Any, stripe_event_id: int) -> bool:
    """dj-stripe's mirror of one verified event, after our reaction (spec §8)."""
    from billing.stripe.webhooks import stripe_event_mirror

    with audit_source(task_id=str(self.request.id or "")):
        return stripe_event_mirror(stripe_event_id=stripe_event_id)
