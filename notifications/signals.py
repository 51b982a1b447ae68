"""After the commit of an audit entry that is a business event we mail about, ask for a
dispatch (a Celery task, published off the caller's thread). Cheap and optional: the beat
schedule runs the same dispatcher every few minutes, so nothing depends on this message
arriving. The billing engine is not touched: every path that audits the event is covered."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models.signals import post_save

# Requests within this many seconds share one dispatch, run when the window ends: a billing
# run finalizing thousands of invoices asks for a handful of dispatches, not thousands.
COALESCE_SECONDS = 5.0
_window_ends = 0.0
_window_lock = threading.Lock()


def _publish() -> None:
    global _window_ends
    from billing.stripe.publisher import publisher
    from notifications.tasks import notifications_dispatch_task

    with _window_lock:
        now = time.monotonic()
        if now < _window_ends:
            return  # the dispatch already asked for runs after this commit
        _window_ends = now + COALESCE_SECONDS
    publisher.submit(notifications_dispatch_task.s().set(countdown=COALESCE_SECONDS))


def request_dispatch() -> None:
    """One dispatch request per outermost transaction, however many entries it wrote."""
    if not settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT:
        return
    if not connection.in_atomic_block:
        _publish()
        return
    if any(entry[1] is _publish for entry in connection.run_on_commit):
        return
    transaction.on_commit(_publish, robust=True)


def _on_audit_entry(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    from notifications.services import RELEVANT_ACTIONS

    if created and instance.action in RELEVANT_ACTIONS:
        request_dispatch()


def connect() -> None:
    from audit.models import AuditEvent

    post_save.connect(_on_audit_entry, sender=AuditEvent, dispatch_uid="notifications.on_audit_entry")
