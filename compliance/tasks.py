"""Celery entry points of compliance (Celery's autodiscovery imports this module)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from audit.context import audit_source
from compliance.services import retention_sweep


@shared_task(name="compliance.tasks.retention_sweep_task", bind=True)
def retention_sweep_task(self: Any) -> dict[str, int]:
    """Daily (beat): the six-year rule — report what is past retention, delete only expired
    sessions and API tokens (45 CFR 164.316(b)(2); compliance/services.py:retention_sweep)."""
    with audit_source(task_id=str(self.request.id or "")):
        report = retention_sweep()
    return report.deleted
