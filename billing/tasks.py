"""Celery entry points. Tasks take ids, never objects, and are safe to run twice."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.context import audit_source
from billing.models import BillingRun
from billing.runs import billing_run_finish_if_done, billing_run_process, billing_run_start, offices_due


@shared_task(bind=True)
def billing_run_tick(self: Any) -> int | None:
    """Hourly (beat): find the due offices and fan out one task per chunk of them."""
    with audit_source(task_id=str(self.request.id or "")):
        as_of = timezone.now()
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
