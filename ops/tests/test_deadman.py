"""Dead-man switches (issue 12, item 6.3): the hourly tick records its success (Celery's
task_success, through a real worker too), a tick that fails does not, and a stopped beat
or audit sealer shows at the top of the console's overview as well as in /health/ready."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from celery.contrib.testing.worker import start_worker
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from audit.services import audit_record, audit_seal
from billing.services import patient_activate, subscription_create
from billing.tasks import billing_run_tick
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from config.celery_app import app
from ops.models import Heartbeat
from ops.selectors import deadman_alerts
from ops.services import BILLING_TICK

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 5, 15, tzinfo=UTC)


def due_office() -> None:
    PlanFactory(code="basic", per_patient_cents=300)
    office = OfficeFactory(timezone="UTC")
    with at(T0):
        patient_activate(patient=PatientFactory(office=office))
        subscription_create(office=office, plan_code="basic")


# --- The heartbeat ------------------------------------------------------------------------


def test_it_records_the_tick_when_it_succeeds_and_not_when_it_fails(broker) -> None:
    due_office()
    later = T0 + timedelta(days=31, hours=1)
    with at(later):
        result = billing_run_tick.apply()  # the tick itself; its chunk goes to the test's broker
    assert result.successful()
    beat = Heartbeat.objects.get(name=BILLING_TICK)
    assert beat.last_success_at == later and beat.successes == 1 and beat.last_task_id == result.id

    broker("redis://127.0.0.1:9/0")  # nobody listens there: fanning out the chunks fails
    due_office_again = T0 + timedelta(days=62, hours=1)
    with at(due_office_again):
        failed = billing_run_tick.apply()
    assert failed.failed()
    beat.refresh_from_db()
    assert beat.last_success_at == later and beat.successes == 1  # unchanged: the tick did not succeed


def test_it_ignores_other_tasks(broker) -> None:
    from audit.tasks import audit_seal_task

    assert audit_seal_task.apply().successful()
    assert not Heartbeat.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_records_the_tick_run_by_a_real_worker_through_the_broker(broker) -> None:
    app.conf.task_always_eager = False
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        billing_run_tick.delay()
        deadline = time.monotonic() + 30
        while not Heartbeat.objects.filter(name=BILLING_TICK).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    beat = Heartbeat.objects.get(name=BILLING_TICK)
    assert timezone.now() - beat.last_success_at < timedelta(seconds=60)
    assert beat.last_task_id


# --- The alerts ----------------------------------------------------------------------------


def test_it_raises_no_alert_when_the_tick_is_recent_and_every_entry_sealed(fresh_tick) -> None:
    audit_record(action="test.entry", data={})
    audit_seal()
    assert deadman_alerts() == []


def test_it_alerts_when_the_tick_is_stale_or_the_sealer_stopped(fresh_tick, settings) -> None:
    fresh_tick(timedelta(hours=2, minutes=1))
    with at(timezone.now() - timedelta(minutes=10, seconds=30)):
        audit_record(action="test.entry", data={})
    alerts = deadman_alerts()
    assert [a.check for a in alerts] == ["billing_tick", "audit_sealer"]
    assert "has not ticked successfully for 2 h 1 min" in alerts[0].message
    assert "alert after 2 h" in alerts[0].message
    assert "1 audit entries are not sealed" in alerts[1].message and "alert after 10 min" in alerts[1].message
    settings.HEALTH_AUDIT_UNSEALED_MAX_AGE_MINUTES = 15
    assert [a.check for a in deadman_alerts()] == ["billing_tick"]


def _operator(client: Client, *, may_view_invoices: bool) -> Client:
    users = get_user_model().objects
    if may_view_invoices:
        client.force_login(users.create_superuser("op", "op@example.com", "pw"))
    else:
        clerk = users.create_user("clerk", "c@example.com", "pw", is_staff=True)
        clerk.user_permissions.add(Permission.objects.get(codename="view_office"))
        client.force_login(clerk)
    return client


@pytest.mark.parametrize("may_view_invoices", [True, False], ids=["operator", "staff without invoices"])
def test_it_shows_a_stale_tick_at_the_top_of_the_console_and_503_on_ready(
    client: Client, broker, fresh_tick, may_view_invoices: bool
) -> None:
    fresh_tick(timedelta(hours=3))
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["failed"] == ["billing_tick"]
    page = _operator(client, may_view_invoices=may_view_invoices).get("/admin/")
    assert page.status_code == 200
    html = unescape(page.content.decode())
    assert 'data-alert="billing_tick"' in html
    assert "Billing run: beat is not ticking" in html
    assert "has not ticked successfully for 3 h" in html
    alerts_at = html.index('id="deadman-alerts"')
    if may_view_invoices:
        assert alerts_at < html.index('id="overview"')  # above the figures
    assert 'data-alert="audit_sealer"' not in html


def test_it_shows_no_alert_block_when_all_is_well(client: Client, fresh_tick) -> None:
    page = _operator(client, may_view_invoices=True).get("/admin/")
    assert page.status_code == 200
    assert 'id="deadman-alerts"' not in page.content.decode()


def test_it_shows_the_heartbeats_read_only_in_the_console(client: Client, fresh_tick) -> None:
    operator = _operator(client, may_view_invoices=True)
    listing = operator.get("/admin/ops/heartbeat/")
    assert listing.status_code == 200
    assert BILLING_TICK in listing.content.decode()
    assert operator.get("/admin/ops/heartbeat/add/").status_code == 403
    beat = Heartbeat.objects.get(name=BILLING_TICK)
    assert operator.post(f"/admin/ops/heartbeat/{beat.pk}/delete/").status_code == 403
    assert Heartbeat.objects.filter(pk=beat.pk).exists()
