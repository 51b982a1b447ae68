"""`run_billing_cycle`'s summary beside a concurrent run (spec §10: it prints the invoices
this run finalized, never those a concurrent run finalized), with real threads, real
connections and real row locks: PostgreSQL only (SQLite ignores `select_for_update()`)."""

from __future__ import annotations

import io
import threading
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from billing.engine.run import billing_run
from billing.models import BillingRun, Invoice, InvoiceKind, InvoiceStatus
from billing.services import patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan
from offices.models import Office

pytestmark = pytest.mark.django_db(transaction=True)

CHI = ZoneInfo("America/Chicago")
NOW = datetime(2026, 4, 10, 6, tzinfo=UTC)  # after the first cycles' end, 00:00 Chicago
WAIT = 30.0  # seconds; a thread still waiting after this is stuck


def _office(name: str, patients: int) -> Office:
    office = OfficeFactory(name=name, timezone="America/Chicago")
    with at(datetime(2026, 3, 1, 9, tzinfo=CHI)):
        for _ in range(patients):
            patient_activate(patient=PatientFactory(office=office))
    with at(datetime(2026, 3, 10, 14, tzinfo=CHI)):
        subscription_create(office=office, plan_code="professional")
    return office


def _cycle(office: Office, status: str) -> Invoice:
    return Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=status)


def test_it_never_lists_in_its_summary_an_invoice_a_concurrent_run_finalized(on_postgres: None) -> None:
    professional_plan()
    maple, harbor = _office("Maple Street Clinic", 2), _office("Harbor View Clinic", 3)
    assert maple.pk < harbor.pk  # the command takes due offices in id order
    held, released = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def hold_maple() -> None:
        """Another request holding Maple's billing lock (an activation in progress)."""
        try:
            with transaction.atomic():
                Office.objects.select_for_update().get(pk=maple.pk)
                held.set()
                released.wait(timeout=WAIT)
        finally:
            connection.close()

    def run_harbor_meanwhile() -> None:
        """Once the command has chosen its offices and waits for Maple, another run bills Harbor."""
        try:
            deadline = time.monotonic() + WAIT
            while not BillingRun.objects.filter(trigger="command").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the command never started its run")
                time.sleep(0.02)
            outcome["run"] = billing_run(office_ids=[harbor.pk], trigger="beat")
        except BaseException as exc:  # reported to the test below
            outcome["error"] = exc
        finally:
            released.set()
            connection.close()

    out = io.StringIO()
    with at(NOW):
        holder = threading.Thread(target=hold_maple)
        holder.start()
        assert held.wait(timeout=WAIT)
        other = threading.Thread(target=run_harbor_meanwhile)
        other.start()
        call_command("run_billing_cycle", stdout=out, stderr=io.StringIO(), no_progress=True)
        other.join(timeout=WAIT)
        holder.join(timeout=WAIT)
    assert "error" not in outcome, outcome
    output = out.getvalue()

    command_run = BillingRun.objects.get(trigger="command")
    assert (command_run.offices_due, command_run.offices_done, command_run.invoices_finalized) == (2, 2, 1)
    assert outcome["run"].invoices_finalized == 1
    mine, theirs = _cycle(maple, InvoiceStatus.OPEN), _cycle(harbor, InvoiceStatus.OPEN)
    rows = [line for line in output.splitlines() if mine.number in line or theirs.number in line]
    assert len(rows) == 1 and mine.number in rows[0] and "Maple Street Clinic" in rows[0]
    assert theirs.number not in output and "Harbor View Clinic" not in output
    assert "invoices finalized 1, opened 1" in output
