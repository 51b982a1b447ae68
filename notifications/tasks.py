"""Celery entry point of the emails (beat every NOTIFICATIONS_DISPATCH_SECONDS, and after
the commit of a relevant audit entry). Safe to run twice or concurrently."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import shared_task

from audit.context import audit_source
from notifications.services import notifications_dispatch


@shared_task(name="notifications.tasks.notifications_dispatch_task", bind=True)
def notifications_dispatch_task(self: Any) -> dict[str, Any]:
    """Emails from the audit trail, suspension warnings, stuck rows, sends (spec §12, emails)."""
    with audit_source(task_id=str(self.request.id or "")):
        return asdict(notifications_dispatch())
