"""A flood of forged webhooks cannot flood the audit trail (spec §9; issue 8, item 18):
the first rejection of a source and reason in a minute is audited, the others are counted,
and the count is audited once that minute is over."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from audit.models import AuditEvent
from billing.models import WebhookRejectionWindow
from billing.stripe.webhooks import webhook_rejections_summarize
from billing.tests.support.factories import at

pytestmark = pytest.mark.django_db
WEBHOOK = "/stripe/webhook/"
T = datetime(2026, 5, 4, 10, 15, 5, tzinfo=UTC)


def _forged(client: Client, *, ip: str = "203.0.113.7") -> int:
    body = json.dumps({"id": "evt_forged", "type": "invoice.paid"})
    response = client.post(
        WEBHOOK, body, content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=00", REMOTE_ADDR=ip
    )
    return response.status_code


def test_it_audits_a_flood_of_forgeries_as_one_entry_and_one_count(client: Client) -> None:
    with at(T):
        assert {_forged(client) for _ in range(200)} == {400}  # every one is still refused
    assert AuditEvent.objects.filter(action="webhook.rejected").count() == 1
    window = WebhookRejectionWindow.objects.get()
    assert window.count == 200 and window.source_ip == "203.0.113.7"

    with at(T + timedelta(minutes=1)):
        assert _forged(client) == 400  # the next minute opens a new window and closes the last
    summary = AuditEvent.objects.get(action="webhook.rejections_summarized")
    assert summary.data["count"] == 200 and summary.data["source_ip"] == "203.0.113.7"
    assert summary.reason == window.reason and summary.outcome == "denied"
    assert AuditEvent.objects.filter(action="webhook.rejected").count() == 2
    with at(T + timedelta(hours=1)):
        assert webhook_rejections_summarize() == 0  # a window of one needs no summary; none twice


def test_it_keeps_sources_apart(client: Client) -> None:
    with at(T):
        _forged(client, ip="203.0.113.7")
        _forged(client, ip="198.51.100.9")
        _forged(client, ip="198.51.100.9")
    assert AuditEvent.objects.filter(action="webhook.rejected").count() == 2
    assert sorted(WebhookRejectionWindow.objects.values_list("source_ip", "count")) == [
        ("198.51.100.9", 2),
        ("203.0.113.7", 1),
    ]
