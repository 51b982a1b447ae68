"""The hourly Celery entry point, through a real broker and a real worker.

The broker is whatever CELERY_BROKER_URL says: the embedded filesystem broker by default,
Redis in CI's second pass. The worker runs in a thread of this process (celery's own
testing worker), so the tasks cross the broker for real."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from celery.contrib.testing.worker import start_worker

from billing.models import BillingRun, BillingRunStatus, Invoice, InvoiceStatus
from billing.services import patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from config.celery_app import app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(tmp_path, settings):
    if app.conf.broker_url.startswith("filesystem://"):
        folder = tmp_path / "broker"
        (folder / "processed").mkdir(parents=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
        }
    app.conf.task_always_eager = False
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as w:
        yield w


def test_it_fans_out_the_hourly_run_in_chunks_through_the_broker(worker, settings):
    settings.BILLING_RUN_CHUNK_SIZE = 2
    PlanFactory(code="basic", per_patient_cents=300)
    t0 = datetime(2026, 1, 5, 15, tzinfo=UTC)
    offices = [OfficeFactory(timezone="UTC") for _ in range(5)]
    with at(t0):
        for office in offices:
            patient_activate(patient=PatientFactory(office=office))
            subscription_create(office=office, plan_code="basic")

    from billing.tasks import billing_run_tick

    with at(t0 + timedelta(days=31, hours=1)):
        billing_run_tick.apply()  # the tick runs here; its chunk tasks go through the broker
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    run = None
    while datetime.now(UTC) < deadline:
        run = BillingRun.objects.order_by("-id").first()
        if run and run.status == BillingRunStatus.FINISHED:
            break
        time.sleep(0.2)
    assert run is not None and run.status == BillingRunStatus.FINISHED, run
    assert run.chunks_total == 3 and run.chunks_done == 3
    assert run.offices_done == 5 and run.invoices_finalized == 5 and run.invoices_opened == 5
    assert Invoice.objects.filter(status=InvoiceStatus.OPEN, kind="cycle").count() == 5
    assert Invoice.objects.filter(status=InvoiceStatus.DRAFT).count() == 5
