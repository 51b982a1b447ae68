"""Celery's `task_success` signal, for the tasks the dead-man switch watches.

The heartbeat is written when the task has returned (in the worker, or wherever it was
applied), so a tick that raised (its database or broker down) leaves the last success as
it was, and the age grows. Recording it here rather than in the task keeps billing's
code unaware of operations; the worker connects it when Django's apps are ready."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_success

logger = logging.getLogger("ops.heartbeat")

WATCHED = frozenset({"billing.tasks.billing_run_tick"})


def _on_task_success(sender: Any = None, **kwargs: Any) -> None:
    name = getattr(sender, "name", None)
    if name not in WATCHED:
        return
    from ops.services import heartbeat_record

    request = getattr(sender, "request", None)
    task_id = str(getattr(request, "id", "") or "")
    try:
        heartbeat_record(name=name, task_id=task_id)
    except Exception:  # the task itself succeeded; a missed beat shows as an older heartbeat
        logger.exception("recording the heartbeat of %s failed", name)


def connect() -> None:
    task_success.connect(_on_task_success, weak=False, dispatch_uid="ops.heartbeat")
