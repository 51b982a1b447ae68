"""Billing under real concurrency (spec §5, §6): runs, activations and one-off invoices
racing each other on PostgreSQL.

Each worker is a real thread with its own database connection (Django's connections are
per thread), closed when it ends. A `threading.Barrier` releases them together. The clock
is frozen (or ticking from a chosen instant) by time-machine in the main thread, which
every thread sees. SQLite serializes writers and ignores `select_for_update()`, so these
tests run on PostgreSQL only.

What must hold whatever the interleaving: exactly one cycle invoice per office and
period, every due draft finalized once and the next one opened once, one line per billable
patient per cycle in the cycle its activation timestamp belongs to, and invoice numbers
`{prefix}-{YYYY}-000001..N` without a gap or a repeat."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.db import IntegrityError, connection
from django.db.models import Q, Sum

from audit.models import AuditEvent
from billing.engine.run import billing_run
from billing.models import (
    BillingRun,
    BillingRunError,
    Invoice,
    InvoiceKind,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    LineKind,
)
from billing.services import invoice_create_one_off, patient_activate, patient_deactivate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from config.errors import ConflictError
from offices.models import Office
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db(transaction=True)

SUBSCRIBED = datetime(2026, 3, 10, 15, tzinfo=UTC)
TIMEZONES = ("America/Chicago", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "UTC")
THREAD_TIMEOUT = 120  # seconds; a worker still running after this is stuck (deadlock or lost wake-up)


# --- Running things together -------------------------------------------------------------


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None


def run_together(tasks: Sequence[Callable[[], Any]]) -> list[Outcome]:
    """Run every task in its own thread, released at once; each thread opens and closes its
    own connection. Fails the test if a thread does not finish (a deadlock or a hang)."""
    barrier = threading.Barrier(len(tasks))
    outcomes = [Outcome() for _ in tasks]

    def worker(index: int, task: Callable[[], Any]) -> None:
        try:
            connection.ensure_connection()  # connect before the barrier: the race starts at the barrier
            barrier.wait(timeout=60)
            outcomes[index].value = task()
        except BaseException as exc:  # reported to the test, which decides what was expected
            outcomes[index].error = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, task), daemon=True) for i, task in enumerate(tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert not stuck, f"workers {stuck} still running after {THREAD_TIMEOUT}s (deadlock?)"
    return outcomes


def errors_of(outcomes: Sequence[Outcome]) -> list[str]:
    return [f"{type(o.error).__name__}: {o.error}" for o in outcomes if o.error is not None]


# --- Oracles -----------------------------------------------------------------------------


def assert_numbers_gapless() -> list[str]:
    """Every numbered invoice, in number order, is {prefix}-{YYYY}-000001..N for its UTC
    year of finalization; the year's sequence row stands at N."""
    prefix = settings.INVOICE_NUMBER_PREFIX
    rows = list(Invoice.objects.exclude(number=None).values_list("number", "finalized_at"))
    numbers = [number for number, _ in rows]
    repeated = [n for n, count in Counter(numbers).items() if count > 1]
    assert not repeated, f"repeated invoice numbers: {repeated}"
    by_year: dict[int, list[str]] = {}
    for number, finalized_at in rows:
        by_year.setdefault(finalized_at.astimezone(UTC).year, []).append(number)
    for year, year_numbers in by_year.items():
        expected = [f"{prefix}-{year}-{i:06d}" for i in range(1, len(year_numbers) + 1)]
        assert sorted(year_numbers) == expected, f"{year}: gap or stranger in {sorted(year_numbers)}"
        assert InvoiceNumberSequence.objects.get(year=year).last_value == len(year_numbers)
    return sorted(numbers)


def billable(intervals: Sequence[ActivationInterval], start: datetime, end: datetime) -> bool:
    return any(i.activated_at < end and (i.deactivated_at is None or i.deactivated_at > start) for i in intervals)


def active_at(intervals: Sequence[ActivationInterval], instant: datetime) -> bool:
    return any(
        i.activated_at <= instant and (i.deactivated_at is None or i.deactivated_at > instant) for i in intervals
    )


def assert_lines_follow_history(office: Office) -> None:
    """Every cycle invoice of the office has exactly one line per patient billable in it
    (for a draft: billable so far; the history holds nothing later than now), of the kind
    the history gives, at the plan's price; its total is the sum of its lines (spec §5)."""
    history: dict[int, list[ActivationInterval]] = {}
    for interval in ActivationInterval.objects.filter(office=office):
        history.setdefault(interval.patient_id, []).append(interval)
    for invoice in Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE).select_related("plan"):
        assert invoice.period_start is not None and invoice.period_end is not None and invoice.plan is not None
        end = invoice.period_end
        expected = {
            pid: (LineKind.RECURRING if active_at(ivs, invoice.period_start) else LineKind.ACTIVATION)
            for pid, ivs in history.items()
            if billable(ivs, invoice.period_start, end)
        }
        lines = list(LineItem.objects.filter(invoice=invoice, patient__isnull=False))
        per_patient = Counter(line.patient_id for line in lines)
        assert all(count == 1 for count in per_patient.values()), f"{invoice}: duplicate lines {per_patient}"
        actual = {line.patient_id: line.kind for line in lines}
        assert actual == expected, f"{invoice} [{invoice.period_start}, {invoice.period_end}): lines != history"
        assert all(line.amount_cents == invoice.plan.per_patient_cents for line in lines)
        line_sum = LineItem.objects.filter(invoice=invoice).aggregate(s=Sum("amount_cents"))["s"] or 0
        assert invoice.total_cents == invoice.subtotal_cents == line_sum, f"{invoice}: total != sum of lines"


def audit_count(action: str, invoice: Invoice) -> int:
    return AuditEvent.objects.filter(action=action, target_type="billing.Invoice", target_id=str(invoice.pk)).count()


# --- Set-up ------------------------------------------------------------------------------


def make_plans() -> tuple[str, str]:
    PlanFactory(code="professional", per_patient_cents=450, minimum_cents=15000, setup_fee_cents=50000)
    PlanFactory(code="basic", per_patient_cents=300, minimum_cents=0, setup_fee_cents=0)
    return "professional", "basic"


def subscribed_offices(count: int) -> list[Office]:
    """`count` offices in several time zones, all subscribed at SUBSCRIBED; office i has
    i % 4 patients (some with none), half active before the subscription (recurring
    lines), half activated during the first cycle (activation lines). Plans alternate
    between one with a minimum and a setup fee, and one with neither (zero totals)."""
    plans = make_plans()
    offices = []
    for i in range(count):
        office = OfficeFactory(timezone=TIMEZONES[i % len(TIMEZONES)])
        patients = [PatientFactory(office=office) for _ in range(i % 4)]
        with at(SUBSCRIBED - timedelta(days=3)):
            for p in patients[::2]:
                patient_activate(patient=p)
        with at(SUBSCRIBED):
            subscription_create(office=office, plan_code=plans[i % 2])
        with at(SUBSCRIBED + timedelta(days=2)):
            for p in patients[1::2]:
                patient_activate(patient=p)
        offices.append(office)
    return offices


# --- a. Concurrent billing runs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "boundaries"),
    [(2, 1), (4, 1), (4, 2)],
    ids=["2-runs-1-boundary", "4-runs-1-boundary", "4-runs-2-boundaries-catch-up"],
)
def test_it_bills_each_cycle_once_under_concurrent_runs(on_postgres: None, workers: int, boundaries: int) -> None:
    offices = subscribed_offices(20)
    # Every office's 1st (and 2nd) boundary, whatever its time zone, lies before as_of.
    as_of = datetime(2026, 3 + boundaries, 11, tzinfo=UTC)
    numbered_before = Invoice.objects.exclude(number=None).count()  # the setup fees

    with at(as_of + timedelta(minutes=1)):
        outcomes = run_together([lambda: billing_run(as_of=as_of) for _ in range(workers)])

    assert errors_of(outcomes) == []
    assert list(BillingRunError.objects.values_list("office_id", "message")) == []
    runs = BillingRun.objects.all()
    assert runs.count() == workers
    # Between them the runs finalized each due draft once and opened each next draft once.
    assert sum(r.invoices_finalized for r in runs) == 20 * boundaries
    assert sum(r.invoices_opened for r in runs) == 20 * boundaries

    for office in offices:
        cycles = list(Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE).order_by("period_start"))
        assert len(cycles) == boundaries + 1, f"office {office.pk}: {len(cycles)} cycle invoices"
        assert len({c.period_start for c in cycles}) == len(cycles)
        assert [c.period_end for c in cycles[:-1]] == [c.period_start for c in cycles[1:]]  # contiguous
        assert cycles[0].period_start == SUBSCRIBED
        *finalized, draft = cycles
        assert draft.status == InvoiceStatus.DRAFT and draft.period_end > as_of
        assert all(c.status in (InvoiceStatus.OPEN, InvoiceStatus.PAID) and c.number for c in finalized)
        for invoice in finalized:
            assert audit_count("invoice.finalized", invoice) == 1, f"{invoice} finalized more than once"
        for invoice in cycles:
            assert audit_count("invoice.opened", invoice) == 1, f"{invoice} opened more than once"
            minimum = LineItem.objects.filter(invoice=invoice, kind=LineKind.MINIMUM_ADJUSTMENT).count()
            assert minimum <= 1
        assert_lines_follow_history(office)

    numbers = assert_numbers_gapless()
    assert len(numbers) == numbered_before + 20 * boundaries

    # And a run afterwards finds nothing left to do.
    with at(as_of + timedelta(minutes=2)):
        again = billing_run(as_of=as_of)
    assert (again.offices_due, again.invoices_finalized, again.invoices_opened) == (0, 0, 0)


# --- b. Concurrent activations -----------------------------------------------------------


def subscribed_office(plan_code: str = "basic") -> Office:
    make_plans()
    office = OfficeFactory(timezone="America/Chicago")
    with at(SUBSCRIBED):
        subscription_create(office=office, plan_code=plan_code)
    return office


def test_it_adds_one_line_per_patient_under_50_concurrent_activations(on_postgres: None) -> None:
    office = subscribed_office()
    patients = [PatientFactory(office=office) for _ in range(50)]
    moment = SUBSCRIBED + timedelta(days=5)

    with at(moment):
        outcomes = run_together([lambda p=p: patient_activate(patient=p) for p in patients])

    assert errors_of(outcomes) == []
    assert ActivationInterval.objects.filter(office=office).count() == 50
    assert ActivationInterval.objects.filter(office=office, deactivated_at=None, activated_at=moment).count() == 50
    draft = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
    lines = LineItem.objects.filter(invoice=draft)
    assert lines.count() == 50
    assert set(lines.values_list("patient_id", flat=True)) == {p.pk for p in patients}
    assert set(lines.values_list("kind", flat=True)) == {LineKind.ACTIVATION}
    assert draft.total_cents == draft.subtotal_cents == 50 * 300  # every concurrent increment counted
    assert Invoice.objects.filter(office=office).count() == 1
    assert_lines_follow_history(office)


def test_it_activates_one_patient_once_under_20_concurrent_activations(on_postgres: None) -> None:
    office = subscribed_office()
    patient = PatientFactory(office=office)
    moment = SUBSCRIBED + timedelta(days=5)

    with at(moment):
        outcomes = run_together([lambda: patient_activate(patient=patient) for _ in range(20)])

    succeeded = [o for o in outcomes if o.error is None]
    assert len(succeeded) == 1, errors_of(outcomes)
    unexpected = [o.error for o in outcomes if o.error is not None and not isinstance(o.error, ConflictError)]
    unexpected = [e for e in unexpected if not isinstance(e, IntegrityError)]
    assert unexpected == [], [f"{type(e).__name__}: {e}" for e in unexpected]
    conflicts = [o.error for o in outcomes if isinstance(o.error, ConflictError)]
    assert all("already active" in e.message for e in conflicts)
    assert ActivationInterval.objects.filter(patient=patient).count() == 1
    draft = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
    assert LineItem.objects.filter(invoice=draft, patient=patient).count() == 1
    assert draft.total_cents == 300
    assert AuditEvent.objects.filter(action="patient.activated", target_id=str(patient.pk)).count() == 1


# --- c. A run racing activations just after the boundary ---------------------------------


def activate_when(signal: threading.Event, delay: float, patient: Patient) -> Patient:
    assert signal.wait(60), "no run started"
    time.sleep(delay)
    return patient_activate(patient=patient)


@dataclass
class RaceOffice:
    office: Office
    before: list[Patient]  # active in the first cycle (one of them deactivated during it)
    racing: list[Patient]  # activated by the racing threads, just after the boundary


def test_it_puts_activations_racing_a_run_into_the_cycle_of_their_timestamp(on_postgres: None) -> None:
    make_plans()
    offices: list[RaceOffice] = []
    for i in range(10):
        office = OfficeFactory(timezone="America/Chicago")
        before = [PatientFactory(office=office) for _ in range(3)]
        racing = [PatientFactory(office=office) for _ in range(4)]
        with at(SUBSCRIBED - timedelta(days=1)):
            patient_activate(patient=before[0])
        with at(SUBSCRIBED):
            subscription_create(office=office, plan_code=("basic", "professional")[i % 2])
        with at(SUBSCRIBED + timedelta(days=3)):
            patient_activate(patient=before[1])
            patient_activate(patient=before[2])
        with at(SUBSCRIBED + timedelta(days=9)):
            patient_deactivate(patient=before[2])
        offices.append(RaceOffice(office=office, before=before, racing=racing))
    boundary = Invoice.objects.get(office=offices[0].office, status=InvoiceStatus.DRAFT).period_end
    assert boundary is not None
    assert set(Invoice.objects.filter(status=InvoiceStatus.DRAFT).values_list("period_end", flat=True)) == {boundary}

    # Head-on collisions: the activations of office k are released the moment a run is done
    # with office k-1 and heads for office k (office 0's when a run has listed the due
    # offices), so the run and the activations race for each office's lock. Whoever wins
    # crosses the boundary; the others must find it crossed.
    gates = [threading.Event() for _ in offices]
    index_of = {race.office.pk: k for k, race in enumerate(offices)}

    def open_next_gate(office_id: int, _stats: object) -> None:
        k = index_of[office_id] + 1
        if k < len(gates):
            gates[k].set()

    tasks: list[Callable[[], Any]] = [
        lambda: billing_run(as_of=boundary, on_start=lambda _due: gates[0].set(), progress=open_next_gate)
        for _ in range(2)
    ]
    tasks += [
        lambda p=p, gate=gates[k], delay=j * 0.002: activate_when(gate, delay, p)
        for k, race in enumerate(offices)
        for j, p in enumerate(race.racing)
    ]
    # The clock ticks from one microsecond after the boundary: each activation gets its own
    # timestamp, all of them in the second cycle.
    with time_machine.travel(boundary + timedelta(microseconds=1), tick=True):
        outcomes = run_together(tasks)

    assert errors_of(outcomes) == []
    assert list(BillingRunError.objects.values_list("office_id", "message")) == []
    for race in offices:
        office = race.office
        first, second = Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE).order_by("period_start")
        assert (first.period_end, second.period_start) == (boundary, boundary)
        assert first.status != InvoiceStatus.DRAFT and second.status == InvoiceStatus.DRAFT
        racing_ids = {p.pk for p in race.racing}
        assert all(i.activated_at > boundary for i in ActivationInterval.objects.filter(patient_id__in=racing_ids)), (
            "an activation after the boundary got a timestamp before it"
        )
        assert ActivationInterval.objects.filter(patient_id__in=racing_ids).count() == 4
        assert set(first.lines.filter(patient__isnull=False).values_list("patient_id", flat=True)) == {
            p.pk for p in race.before
        }
        second_lines = dict(second.lines.values_list("patient_id", "kind"))
        assert second_lines == {
            race.before[0].pk: LineKind.RECURRING,
            race.before[1].pk: LineKind.RECURRING,
            **dict.fromkeys(racing_ids, LineKind.ACTIVATION),
        }
        assert_lines_follow_history(office)

    # Finalizing the second cycle later keeps every racing activation, once.
    end = Invoice.objects.get(office=offices[0].office, status=InvoiceStatus.DRAFT).period_end
    with at(end + timedelta(hours=1)):
        billing_run(as_of=end)
    for race in offices:
        second = Invoice.objects.get(office=race.office, period_start=boundary)
        assert second.status != InvoiceStatus.DRAFT
        assert second.lines.filter(patient__isnull=False).count() == 2 + 4
        assert_lines_follow_history(race.office)
    assert_numbers_gapless()


def test_it_bills_an_activation_in_its_own_cycle_when_the_run_was_ahead_of_the_clock(on_postgres: None) -> None:
    """`validate_as_of` accepts an as-of up to 5 s ahead of the clock (skew). The run then
    finalizes C before C.end by that clock; an activation that the same clock stamps
    before C.end belongs to C (spec §5: billable in C), so C must bill it, or the
    activation must be stamped into C+1. Either way the history and the lines agree."""
    office = subscribed_office()
    patient = PatientFactory(office=office)
    boundary = Invoice.objects.get(office=office, status=InvoiceStatus.DRAFT).period_end
    assert boundary is not None

    with at(boundary - timedelta(seconds=2)):
        billing_run(as_of=boundary)  # 2 s ahead: within the tolerance
    with at(boundary - timedelta(seconds=1)):
        patient_activate(patient=patient)
    with at(boundary + timedelta(days=40)):
        billing_run()

    assert_lines_follow_history(office)


# --- d. Concurrent one-off invoices ------------------------------------------------------


def test_it_numbers_concurrent_one_off_invoices_without_gaps(on_postgres: None) -> None:
    offices = [OfficeFactory() for _ in range(12)]
    tasks = [
        lambda office=office, k=k: invoice_create_one_off(
            office=office, lines=[{"description": f"Onboarding workshop {k}", "amount_cents": 10000 + k}]
        )
        for office in offices
        for k in range(2)
    ]
    with at(datetime(2026, 6, 1, 12, tzinfo=UTC)):
        outcomes = run_together(tasks)

    assert errors_of(outcomes) == []
    invoices = Invoice.objects.filter(kind=InvoiceKind.ONE_OFF)
    assert invoices.count() == 24
    assert all(i.status == InvoiceStatus.OPEN and i.lines.count() == 1 for i in invoices)
    assert Counter(invoices.values_list("office_id", flat=True)) == dict.fromkeys((o.pk for o in offices), 2)
    numbers = assert_numbers_gapless()
    prefix = settings.INVOICE_NUMBER_PREFIX
    assert numbers == [f"{prefix}-2026-{i:06d}" for i in range(1, 25)]
    assert sorted(o.value.number for o in outcomes) == numbers


def test_it_numbers_one_offs_and_cycle_invoices_finalized_together_without_gaps(on_postgres: None) -> None:
    offices = subscribed_offices(10)
    as_of = datetime(2026, 4, 11, tzinfo=UTC)
    before = Invoice.objects.exclude(number=None).count()
    tasks: list[Callable[[], Any]] = [lambda: billing_run(as_of=as_of) for _ in range(3)]
    tasks += [
        lambda office=office: invoice_create_one_off(
            office=office, lines=[{"description": "Extra training", "amount_cents": 2500, "quantity": 2}]
        )
        for office in offices
    ]
    with at(as_of + timedelta(minutes=5)):
        outcomes = run_together(tasks)

    assert errors_of(outcomes) == []
    assert list(BillingRunError.objects.values_list("office_id", "message")) == []
    numbers = assert_numbers_gapless()
    assert len(numbers) == before + 10 + 10  # one cycle invoice and one one-off per office
    one_offs = Invoice.objects.filter(kind=InvoiceKind.ONE_OFF, is_setup_fee=False)
    assert one_offs.count() == 10 and all(i.total_cents == 5000 for i in one_offs)
    assert Invoice.objects.filter(Q(kind=InvoiceKind.CYCLE) & ~Q(status=InvoiceStatus.DRAFT)).count() == 10
