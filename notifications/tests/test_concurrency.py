"""Two dispatchers at once (two beat deliveries, an after-commit task beside the beat one)
send each email once (spec §12: at most once per event). Locks: PostgreSQL only."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection

from audit.models import AuditEvent
from billing.tests.support.factories import at
from billing.tests.support.stripe_helpers import billed_office
from notifications.models import EmailStatus, OutboundEmail
from notifications.services import emails_from_audit_trail, notifications_dispatch, outbound_email_send

pytestmark = pytest.mark.django_db(transaction=True)
CHI = ZoneInfo("America/Chicago")
NOW = datetime(2026, 4, 10, 7, tzinfo=CHI)


def at_once(n: int, work: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait()
            with at(NOW):
                results.append(work())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return results


def test_it_sends_each_email_once_when_dispatchers_run_at_once(on_postgres, smtp):
    offices = [billed_office(patients=1) for _ in range(3)]
    results = at_once(4, notifications_dispatch)
    assert sum(r.created for r in results) == 6 and sum(r.sent for r in results) == 6
    assert len(smtp.received) == 6
    assert sorted(m["To"] for m in smtp.received) == sorted(o.billing_email for o in offices for _ in range(2))
    assert OutboundEmail.objects.filter(status=EmailStatus.SENT).count() == 6
    assert AuditEvent.objects.filter(action="email.sent").count() == 6


def test_it_lets_one_sender_claim_a_row(on_postgres, smtp):
    billed_office(patients=1)
    with at(NOW):
        emails_from_audit_trail()
    row = OutboundEmail.objects.order_by("id").first()
    assert row is not None
    outcomes = at_once(6, lambda: outbound_email_send(email_id=row.pk))
    assert sorted(outcomes) == ["not due"] * 5 + ["sent"]
    assert len(smtp.received) == 1
