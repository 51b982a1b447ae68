"""`/metrics` (issue 12, item 6): only for the bearer of METRICS_TOKEN (404 when none is
set), Prometheus' text format, the state-like figures read from the database at scrape
time (checked against rows this test seeds), the webhook outcome counter through signed
deliveries to the real view, request counts from django-prometheus, and counters added up
across processes under PROMETHEUS_MULTIPROC_DIR (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from audit.models import AuditEvent
from audit.services import audit_record, audit_seal
from billing.models import BillingRun, BillingRunStatus, Invoice, InvoiceStatus, PushState
from billing.tests.support.factories import at
from billing.tests.support.stripe_helpers import billed_office, deliver
from offices.models import SubscriptionStatus

pytestmark = pytest.mark.django_db

TOKEN = "metrics-test-token-" + "x" * 24
ROOT = Path(__file__).resolve().parents[2]


def scrape(client: Client, token: str = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


# --- Who may scrape -----------------------------------------------------------------------


def test_it_has_no_metrics_endpoint_when_no_token_is_set(client: Client, settings) -> None:
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


def test_it_requires_the_bearer_token(client: Client, settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    for header in (None, "", "Bearer", "Bearer wrong", f"Token {TOKEN}", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
        response = client.get("/metrics", **extra)
        assert response.status_code == 401, header
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"billing_" not in response.content
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200  # the scheme is case-blind
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


# --- What it says --------------------------------------------------------------------------


def test_it_reports_the_seeded_figures(client: Client, settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    office = billed_office(patients=3)  # setup fee + first cycle finalized (pending push), next cycle drafted
    second = billed_office(patients=1)
    Invoice.objects.filter(office=second, status=InvoiceStatus.OPEN, is_setup_fee=True).update(
        push_state=PushState.FAILED
    )
    Invoice.objects.filter(office=second, status=InvoiceStatus.OPEN, is_setup_fee=False).update(
        push_state=PushState.PUSHED
    )
    type(office).objects.filter(pk=second.pk).update(subscription_status=SubscriptionStatus.SUSPENDED)

    # The latest completed run: 150 s long, with known figures; and one still running.
    done = BillingRun.objects.create(
        as_of=datetime(2026, 5, 10, 6, tzinfo=UTC),
        trigger="beat",
        status=BillingRunStatus.FINISHED,
        offices_due=7,
        offices_done=6,
        error_count=1,
        invoices_finalized=6,
        invoices_opened=5,
        lines_created=42,
    )
    started = datetime(2026, 5, 10, 6, 0, 5, tzinfo=UTC)
    BillingRun.objects.filter(pk=done.pk).update(started_at=started, finished_at=started + timedelta(seconds=150))
    running = BillingRun.objects.create(as_of=datetime(2026, 5, 10, 7, tzinfo=UTC), trigger="beat")
    BillingRun.objects.filter(pk=running.pk).update(started_at=datetime(2026, 5, 10, 7, 0, 2, tzinfo=UTC))

    # Dunning transitions as billing/dunning.py audits them.
    for action in ("invoice.past_due", "invoice.past_due", "subscription.past_due", "subscription.suspended"):
        audit_record(action=action, target=second, office_id=second.pk, data={})
    audit_seal()
    # One entry left unsealed for 90 s (this test's transaction: the after-commit sealer never runs).
    with at(timezone.now() - timedelta(seconds=90)):
        audit_record(action="test.unsealed", data={})

    from ops.models import Heartbeat
    from ops.services import BILLING_TICK

    tick_at = timezone.now() - timedelta(minutes=5)
    Heartbeat.objects.create(name=BILLING_TICK, last_success_at=tick_at, successes=1)

    m = scrape(client)
    assert value(m, "ops_metrics_database_up") == 1
    assert value(m, "billing_invoices_by_push_state", push_state="pending") == 2  # the first office's two
    assert value(m, "billing_invoices_by_push_state", push_state="failed") == 1
    assert value(m, "billing_invoices_by_push_state", push_state="pushed") == 1
    assert value(m, "billing_invoices_by_push_state", push_state="not_required") == 2  # the two drafts
    assert value(m, "billing_offices_by_subscription_status", status="active") == 1
    assert value(m, "billing_offices_by_subscription_status", status="suspended") == 1
    assert value(m, "billing_offices_by_subscription_status", status="canceled") == 0
    assert value(m, "billing_runs_by_status", status="finished") == 3  # two from billed_office, ours
    assert value(m, "billing_runs_by_status", status="running") == 1
    assert value(m, "billing_runs_by_status", status="failed") == 0
    assert (
        value(m, "billing_run_latest_started_timestamp_seconds")
        == datetime(2026, 5, 10, 7, 0, 2, tzinfo=UTC).timestamp()
    )
    assert value(m, "billing_run_last_completed_duration_seconds") == 150
    assert (
        value(m, "billing_run_last_completed_finished_timestamp_seconds")
        == (started + timedelta(seconds=150)).timestamp()
    )
    assert value(m, "billing_run_last_completed_offices_due") == 7
    assert value(m, "billing_run_last_completed_offices_done") == 6
    assert value(m, "billing_run_last_completed_errors") == 1
    assert value(m, "billing_run_last_completed_invoices_finalized") == 6
    assert value(m, "billing_run_last_completed_invoices_opened") == 5
    assert value(m, "billing_run_last_completed_lines_created") == 42
    assert value(m, "billing_run_last_completed_failed") == 0
    assert value(m, "billing_dunning_transitions_total", transition="invoice_past_due") == 2
    assert value(m, "billing_dunning_transitions_total", transition="office_past_due") == 1
    assert value(m, "billing_dunning_transitions_total", transition="office_suspended") == 1
    assert value(m, "billing_dunning_transitions_total", transition="office_reactivated") == 0
    assert value(m, "audit_unsealed_events") == 1
    assert 90 <= (value(m, "audit_oldest_unsealed_age_seconds") or 0) < 150
    assert value(m, "audit_chain_head_seq") == AuditEvent.objects.exclude(seq=None).count()
    assert value(m, "billing_tick_last_success_timestamp_seconds") == pytest.approx(tick_at.timestamp(), abs=1e-3)
    assert value(m, "ops_deadman_alert", check="billing_tick") == 0
    assert value(m, "ops_deadman_alert", check="audit_sealer") == 0


def test_it_shows_the_dead_man_switches_firing(client: Client, settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    with at(timezone.now() - timedelta(minutes=30)):
        audit_record(action="test.unsealed", data={})
    m = scrape(client)
    assert value(m, "ops_deadman_alert", check="billing_tick") == 1  # never ticked
    assert value(m, "ops_deadman_alert", check="audit_sealer") == 1
    assert value(m, "billing_tick_last_success_timestamp_seconds") is None
    assert value(m, "billing_run_last_completed_duration_seconds") is None  # no run yet: no sample, not a zero


def test_it_counts_requests_by_view_name_not_by_path(client: Client, settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    name = "django_http_responses_total_by_status_view_method_total"
    before = value(scrape(client), name, status="200", view="api-index", method="GET") or 0
    assert client.get("/api/v1/").status_code == 200
    assert client.get("/health/live").status_code == 200  # probes are answered before the metrics middleware
    m = scrape(client)
    assert value(m, name, status="200", view="api-index", method="GET") == before + 1
    assert not [key for key in m if "health" in json.dumps(key)]


@pytest.mark.django_db(transaction=True)
def test_it_counts_webhook_outcomes_of_signed_deliveries(client: Client, settings, broker) -> None:
    settings.METRICS_TOKEN = TOKEN
    settings.STRIPE_WEBHOOK_SECRET = f"whsec_{uuid.uuid4().hex}"
    settings.STRIPE_PUSH_ENABLED = True  # dj-stripe's mirror becomes a task (the test's broker), not a Stripe call
    name = "billing_webhook_deliveries_total"

    def counts() -> dict[str, float]:
        m = scrape(client)
        return {
            "accepted": value(m, name, outcome="accepted", reason="") or 0,
            "duplicate": value(m, name, outcome="duplicate", reason="") or 0,
            "mismatch": value(m, name, outcome="rejected", reason="signature mismatch") or 0,
            "too_old": value(m, name, outcome="rejected", reason="timestamp outside tolerance (too old)") or 0,
        }

    before = counts()
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2026-08-26.dahlia",
        "created": int(time.time()),
        "livemode": False,
        "type": "customer.created",  # not one we react to: accepted, recorded, ignored
        "data": {"object": {"id": "cus_metrics", "object": "customer"}},
    }
    first = deliver(event)
    assert first.status_code == 200 and json.loads(first.content)["status"] == "processed", first.content
    assert json.loads(deliver(event).content)["status"] == "duplicate"
    assert deliver(event, secret="whsec_not_ours").status_code == 400
    assert deliver(event, t=int(time.time()) - 3600).status_code == 400
    after = counts()
    assert {k: after[k] - before[k] for k in after} == {"accepted": 1, "duplicate": 1, "mismatch": 1, "too_old": 1}


# --- Many processes --------------------------------------------------------------------------

COUNT_IN_A_PROCESS = """
import django
django.setup()
from ops.counters import webhook_delivery_count
for _ in range({n}):
    webhook_delivery_count(outcome="accepted")
webhook_delivery_count(outcome="rejected", reason="signature mismatch")
"""


def test_it_adds_up_the_counters_of_every_worker_under_prometheus_multiproc_dir(
    client: Client, settings, tmp_path, monkeypatch
) -> None:
    """Two worker processes count deliveries into PROMETHEUS_MULTIPROC_DIR; the process
    serving /metrics (this one, which counted nothing there) reports their sum."""
    settings.METRICS_TOKEN = TOKEN
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS")},
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PYTHONPATH": str(ROOT),
    }
    workers = [
        subprocess.Popen([sys.executable, "-c", COUNT_IN_A_PROCESS.format(n=n)], cwd=ROOT, env=env) for n in (3, 4)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    m = scrape(client)
    assert value(m, "billing_webhook_deliveries_total", outcome="accepted", reason="") == 7
    assert value(m, "billing_webhook_deliveries_total", outcome="rejected", reason="signature mismatch") == 2
    assert value(m, "ops_metrics_database_up") == 1  # the database's figures are there as well
