"""The billing run commits office by office (spec §6: one transaction per office and
boundary; one lock order, office before the year's number row). Issue 8, defect 1: the
command used to wrap the whole run in one transaction, so a crash at office 2 lost office
1's finalized invoice and every processed office and the number row stayed locked until the
command ended. The dry run alone is one transaction, rolled back."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from billing.engine import run as run_module
from billing.models import Invoice, InvoiceKind, InvoiceNumberSequence, InvoiceStatus
from billing.tests.engine.test_run_command import NOW, _office
from billing.tests.support.factories import at, professional_plan
from offices.models import Office

pytestmark = pytest.mark.django_db(transaction=True)


class Crash(BaseException):
    """Stands for the process dying (kill, Ctrl-C): not an office error the run records."""


def _command(*args: str) -> str:
    out = io.StringIO()
    with at(NOW):
        call_command("run_billing_cycle", *args, stdout=out, stderr=io.StringIO(), no_progress=True)
    return out.getvalue()


def _during_office(monkeypatch: pytest.MonkeyPatch, office_id: int, hook: Any) -> None:
    """Call `hook()` when the run's step for `office_id` begins, inside that step."""
    real = run_module.advance_one

    def advance_one(*, office: Office, as_of: Any, stats: Any) -> bool:
        if office.pk == office_id:
            hook()
        return real(office=office, as_of=as_of, stats=stats)

    monkeypatch.setattr(run_module, "advance_one", advance_one)


@pytest.fixture
def two_offices() -> tuple[Office, Office]:
    professional_plan()
    first, second = _office("Maple Street Clinic", 2), _office("Harbor View Clinic", 3)
    assert first.pk < second.pk  # the run takes due offices in id order
    return first, second


def _cycle_statuses(office: Office) -> list[str]:
    return list(
        Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE)
        .order_by("period_start")
        .values_list("status", flat=True)
    )


def test_it_keeps_what_a_crashed_command_finalized_before_the_crash(monkeypatch, two_offices) -> None:
    first, second = two_offices

    def crash() -> None:
        raise Crash

    _during_office(monkeypatch, second.pk, crash)
    with pytest.raises(Crash):
        _command()
    assert _cycle_statuses(first) == [InvoiceStatus.OPEN, InvoiceStatus.DRAFT]  # finalized, next opened
    assert _cycle_statuses(second) == [InvoiceStatus.DRAFT]  # its step rolled back

    monkeypatch.undo()
    _command()  # the rerun completes the rest, and only that
    assert _cycle_statuses(first) == [InvoiceStatus.OPEN, InvoiceStatus.DRAFT]
    assert _cycle_statuses(second) == [InvoiceStatus.OPEN, InvoiceStatus.DRAFT]
    numbers = sorted(Invoice.objects.exclude(number=None).values_list("number", flat=True))
    assert [int(n.rsplit("-", 1)[1]) for n in numbers] == list(range(1, len(numbers) + 1))  # gapless


def test_it_holds_no_lock_of_a_finished_office_or_the_number_row_while_it_goes_on(
    on_postgres, monkeypatch, two_offices
) -> None:
    first, second = two_offices
    seen: dict[str, Any] = {}

    def other_worker() -> None:
        # What an activation in the first office, or a one-off invoice elsewhere, needs now.
        try:
            with transaction.atomic():
                Office.objects.select_for_update(nowait=True).get(pk=first.pk)
                seen["office"] = "free"
                InvoiceNumberSequence.objects.select_for_update(nowait=True).get(year=NOW.year)
                seen["number_row"] = "free"
        except Exception as exc:  # LockNotAvailable surfaces as OperationalError
            seen["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    def probe() -> None:
        thread = threading.Thread(target=other_worker)
        thread.start()
        thread.join(timeout=30)

    _during_office(monkeypatch, second.pk, probe)
    _command()
    assert seen == {"office": "free", "number_row": "free"}


def test_it_rolls_the_whole_dry_run_back_in_one_transaction(two_offices) -> None:
    before = list(Invoice.objects.order_by("pk").values_list("pk", "status", "number"))
    sequences = list(InvoiceNumberSequence.objects.order_by("year").values_list("year", "last_value"))
    output = _command("--dry-run")
    assert "DRY RUN" in output and output.count("(would number)") == 2
    assert list(Invoice.objects.order_by("pk").values_list("pk", "status", "number")) == before
    assert list(InvoiceNumberSequence.objects.order_by("year").values_list("year", "last_value")) == sequences
