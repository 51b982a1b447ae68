"""`manage.py run_billing_cycle [--as-of ISO8601] [--office ID] [--dry-run]` (spec §6, §10)."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from billing.models import BillingRun, Invoice, InvoiceKind, InvoiceStatus, LineItem
from billing.services import patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan
from offices.models import Office

pytestmark = pytest.mark.django_db

CHI = ZoneInfo("America/Chicago")
# 2026-04-10 00:00 Chicago is 05:00 UTC; the command runs at 06:00 UTC.
AS_OF = "2026-04-10T05:30:00+00:00"
NOW = datetime(2026, 4, 10, 6, tzinfo=UTC)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


def _office(name: str, patients: int) -> Office:
    office = OfficeFactory(name=name, timezone="America/Chicago")
    for _ in range(patients):
        with at(local(2026, 3, 1, 9)):
            patient_activate(patient=PatientFactory(office=office))
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="professional")
    return office


@pytest.fixture
def offices() -> tuple[Office, Office]:
    professional_plan()
    return _office("Maple Street Clinic", 2), _office("Harbor View Clinic", 40)


def run_command(*args: str, **options: Any) -> str:
    out = io.StringIO()
    with at(NOW):
        call_command("run_billing_cycle", *args, stdout=out, stderr=io.StringIO(), no_progress=True, **options)
    return out.getvalue()


def _cycle(office: Office, status: str) -> Invoice:
    return Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=status)


def test_it_runs_as_of_an_iso_instant_and_prints_the_summary_table(offices: tuple[Office, Office]) -> None:
    maple, harbor = offices

    output = run_command(as_of=AS_OF)

    run = BillingRun.objects.get()
    assert run.as_of == datetime(2026, 4, 10, 5, 30, tzinfo=UTC)
    assert (run.offices_due, run.offices_done, run.invoices_finalized, run.invoices_opened) == (2, 2, 2, 2)
    for office, total in ((maple, 15000), (harbor, 18000)):
        finalized = _cycle(office, InvoiceStatus.OPEN)
        assert finalized.total_cents == total
        assert _cycle(office, InvoiceStatus.DRAFT).period_start == local(2026, 4, 10)
        row = next(line for line in output.splitlines() if finalized.number and finalized.number in line)
        assert office.name in row
        assert f"{total // 100:,}.00 USD" in row
        assert "2026-03-10..2026-04-10" in row
    header = next(line for line in output.splitlines() if line.startswith("office"))
    for column in ("invoice", "kind", "period", "lines", "total", "status"):
        assert column in header
    assert "offices due 2, done 2, errors 0" in output
    assert "invoices finalized 2, opened 2" in output


def test_it_bills_only_the_office_it_is_given(offices: tuple[Office, Office]) -> None:
    maple, harbor = offices

    output = run_command("--as-of", AS_OF, "--office", str(harbor.pk))

    assert BillingRun.objects.get().office_filter == [harbor.pk]
    assert _cycle(harbor, InvoiceStatus.OPEN).total_cents == 18000
    assert _cycle(maple, InvoiceStatus.DRAFT).period_start == local(2026, 3, 10, 14)  # untouched
    assert not Invoice.objects.filter(office=maple, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN).exists()
    assert harbor.name in output and maple.name not in output
    assert "offices due 1, done 1" in output


def test_it_refuses_an_unknown_office(offices: tuple[Office, Office]) -> None:
    with pytest.raises(CommandError, match="No office with id 999999"):
        run_command("--as-of", AS_OF, "--office", "999999")
    assert not BillingRun.objects.exists()


def _table_rows(output: str) -> list[str]:
    """The summary table's rows with the invoice number blanked out."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("office")) + 2
    rows = []
    for line in lines[start:]:
        if line.startswith("offices due"):
            break
        line = re.sub(r"\S+-\d{4}-\d{6}|\(would number\)", "<number>", line)
        rows.append(" ".join(line.split()))
    return rows


def test_it_shows_in_a_dry_run_what_would_be_invoiced_and_writes_nothing(offices: tuple[Office, Office]) -> None:
    def state() -> tuple[Any, ...]:
        return (
            BillingRun.objects.count(),
            AuditEvent.objects.count(),
            list(Invoice.objects.order_by("id").values()),
            list(LineItem.objects.order_by("id").values()),
            list(Office.objects.order_by("id").values()),
        )

    before = state()
    dry = run_command("--as-of", AS_OF, "--dry-run")
    assert state() == before
    assert "DRY RUN" in dry

    real = run_command("--as-of", AS_OF)

    # The dry run announced exactly the invoices (office, kind, period, line count,
    # total, status) that the real run then made; only the numbers may differ.
    assert _table_rows(dry) == _table_rows(real)
    assert len(_table_rows(real)) == 2
    maple, harbor = offices
    assert _cycle(maple, InvoiceStatus.OPEN).lines.count() == 3  # 2 patients + minimum adjustment
    assert _cycle(harbor, InvoiceStatus.OPEN).lines.count() == 40


@pytest.mark.parametrize("as_of", ["2026-04-10T07:00:00+00:00", "2026-04-11T00:00:00-05:00"])
def test_it_refuses_an_as_of_in_the_future(offices: tuple[Office, Office], as_of: str) -> None:
    with pytest.raises(CommandError, match="in the future"):
        run_command("--as-of", as_of)
    assert not BillingRun.objects.exists()
    assert not Invoice.objects.filter(status=InvoiceStatus.OPEN, kind=InvoiceKind.CYCLE).exists()


def test_it_runs_as_of_now_by_default(offices: tuple[Office, Office]) -> None:
    run_command()
    assert BillingRun.objects.get().as_of == NOW
    assert Invoice.objects.filter(kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN).count() == 2
