"""Celery entry points of billing (Celery's autodiscovery imports this module). Tasks take
ids, never objects, and are safe to run twice. The Stripe tasks live with the rest of the
Stripe code in billing/stripe/tasks.py and are registered by importing them here."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.context import audit_source
from billing.dunning import dunning_run
from billing.engine.run import (
    billing_run_finish_if_done,
    billing_run_process,
    billing_run_start,
    billing_runs_fail_stalled,
    offices_due,
)
from billing.models import BillingRun
from billing.stripe.tasks import (  # noqa: F401 - registers the Stripe tasks with the worker
    customer_ensure_task,
    customer_sync_task,
    enqueue_pending_customer_syncs,
    enqueue_pending_pushes,
    invoice_push_task,
    invoice_void_sync_task,
    reconcile_stripe_task,
    stripe_event_mirror_task,
)
from billing.stripe.webhooks import webhook_rejections_summarize


@shared_task(name="billing.tasks.billing_run_tick", bind=True)
def billing_run_tick(self: Any) -> int | None:
    """Hourly (beat): find the due offices and fan out one task per chunk of them (spec §6)."""
    with audit_source(task_id=str(self.request.id or "")):
        as_of = timezone.now()
        billing_runs_fail_stalled(now=as_of)
        if settings.STRIPE_PUSH_ENABLED:
            enqueue_pending_pushes()
            enqueue_pending_customer_syncs()
        due = offices_due(as_of=as_of)
        if not due:
            return None
        size = max(1, settings.BILLING_RUN_CHUNK_SIZE)
        chunks = [due[i : i + size] for i in range(0, len(due), size)]
        run = billing_run_start(as_of=as_of, trigger="beat", office_ids=None, offices_due_count=len(due), chunks=chunks)
        for seq, chunk in enumerate(chunks):
            billing_run_chunk.delay(run.pk, chunk, seq)
        return run.pk


@shared_task(name="billing.tasks.billing_run_chunk", bind=True, acks_late=True)
def billing_run_chunk(self: Any, run_id: int, office_ids: list[int], chunk_seq: int | None = None) -> None:
    """One chunk of a beat run's offices; safe to deliver twice; the last chunk done
    closes the run (spec §6)."""
    with audit_source(task_id=str(self.request.id or "")):
        run = BillingRun.objects.get(pk=run_id)
        billing_run_process(run=run, office_ids=office_ids, chunk_seq=chunk_seq)
        billing_run_finish_if_done(run_id)


@shared_task(name="billing.tasks.dunning_tick", bind=True)
def dunning_tick(self: Any) -> dict[str, int]:
    """Hourly (beat): send_invoice invoices past their due date become past due; offices
    past due longer than the grace period are suspended; paid-up offices are active again
    (spec §8)."""
    with audit_source(task_id=str(self.request.id or "")):
        webhook_rejections_summarize()  # the counts of floods of rejected webhooks, once a minute is over
        return asdict(dunning_run())
