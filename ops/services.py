"""Operations writes: the heartbeats of periodic tasks."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from ops.models import Heartbeat

BILLING_TICK = "billing.tasks.billing_run_tick"


@transaction.atomic
def heartbeat_record(*, name: str, task_id: str = "", at: datetime | None = None) -> Heartbeat:
    """Note that the task `name` has just succeeded (the dead-man switch's input; not
    audited: it is machinery, hourly, and the run it belongs to is audited itself)."""
    at = at or timezone.now()
    updated = Heartbeat.objects.filter(name=name).update(
        last_success_at=at, last_task_id=task_id[:255], successes=F("successes") + 1
    )
    if not updated:
        try:
            with transaction.atomic():
                return Heartbeat.objects.create(name=name, last_success_at=at, last_task_id=task_id[:255], successes=1)
        except IntegrityError:  # a concurrent first success: count this one on its row
            Heartbeat.objects.filter(name=name).update(
                last_success_at=at, last_task_id=task_id[:255], successes=F("successes") + 1
            )
    return Heartbeat.objects.get(name=name)
