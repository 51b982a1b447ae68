"""Property tests: the real services and billing run against an independent oracle.

Random offices (zone, anchor, plan, optional trial), random activation histories of a
few patients over three to four months — with events exactly on cycle boundaries and
within microseconds, seconds, minutes of them — and random billing runs, punctual or days
late, are played in time order through `subscription_create`, `patient_activate`,
`patient_deactivate` and `billing_run`, each with the clock frozen at its instant. After
every step the office's invoices must be what `reference_model.expected_billing` says
(spec §4–§7). Each example runs in its own transaction, rolled back at the end."""

from __future__ import annotations

import calendar
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.engine.run import billing_run
from billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
)
from billing.services import patient_activate, patient_deactivate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from billing.tests.support.reference_model import (
    ExpectedBilling,
    ExpectedCycleInvoice,
    Interval,
    PlanTerms,
    expected_billing,
    schedule_for,
)
from offices.models import Office
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db

ZONES = (
    "UTC",
    "America/Chicago",
    "America/Santiago",
    "America/Havana",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Europe/London",
    "Pacific/Chatham",
)
MICROSECOND = timedelta(microseconds=1)
NEAR = (
    timedelta(0),
    MICROSECOND,
    -MICROSECOND,
    timedelta(seconds=1),
    timedelta(seconds=-1),
    timedelta(minutes=5),
    timedelta(minutes=-5),
    timedelta(minutes=59),
    timedelta(minutes=-59),
    timedelta(days=1),
    timedelta(days=-1),
)
LATE = (
    timedelta(0),
    MICROSECOND,
    timedelta(minutes=1),
    timedelta(hours=1),
    timedelta(hours=27),
    timedelta(days=2),
    timedelta(days=9),
)
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("BILLING_PROPERTY_EXAMPLES", "30")),  # raise it to search harder
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- Scenarios --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    at: datetime
    action: str  # "subscribe" | "activate" | "deactivate" | "run"
    patient: int | None = None


@dataclass(frozen=True)
class Scenario:
    """One office's life: events in the order they are played (time order; ties in any order)."""

    zone_name: str
    plan: PlanTerms
    subscribed_at: datetime
    patient_count: int
    events: tuple[Event, ...]

    @property
    def end(self) -> datetime:
        return self.events[-1].at

    def boundaries(self) -> list[datetime]:
        """Every cycle start after the first one, up to the end of the scenario (the trial
        end counts as a boundary: the run opens the first cycle there)."""
        schedule = schedule_for(plan=self.plan, zone_name=self.zone_name, subscribed_at=self.subscribed_at)
        found = [schedule.trial_ends_at] if schedule.trial_ends_at is not None else []
        k = 1
        while schedule.boundary(k) <= self.end:
            found.append(schedule.boundary(k))
            k += 1
        return [b for b in found if b <= self.end]


def patient_timeline(instants: Sequence[datetime]) -> list[tuple[datetime, str]]:
    """Strictly increasing instants alternate activate, deactivate, activate, … (spec §5:
    activating an active patient is a 409)."""
    return [(t, "activate" if i % 2 == 0 else "deactivate") for i, t in enumerate(instants)]


def make_scenario(
    *,
    zone_name: str,
    plan: PlanTerms,
    subscribed_at: datetime,
    patient_instants: Sequence[Sequence[datetime]],
    runs: Sequence[datetime],
    end: datetime,
    ranks: Sequence[int] | None = None,
) -> Scenario:
    """Merge the subscription, every patient's timeline and the runs in time order; events
    at the same instant are ordered by `ranks` (default: as listed: subscription, patients,
    runs). A final run at `end`, after everything else, closes the scenario."""
    unordered = [Event(subscribed_at, "subscribe")]
    for index, instants in enumerate(patient_instants):
        assert list(instants) == sorted(set(instants)), "one patient's events must be strictly ordered"
        unordered += [Event(t, action, index) for t, action in patient_timeline(instants)]
    unordered += [Event(t, "run") for t in sorted(set(runs))]
    rank = list(ranks) if ranks is not None else list(range(len(unordered)))
    ordered = [e for _, _, e in sorted(zip((e.at for e in unordered), rank, unordered, strict=True))]
    assert end >= ordered[-1].at
    ordered.append(Event(end, "run"))
    return Scenario(
        zone_name=zone_name,
        plan=plan,
        subscribed_at=subscribed_at,
        patient_count=len(patient_instants),
        events=tuple(ordered),
    )


@st.composite
def scenarios(draw: st.DrawFn, max_patients: int = 4, max_events_per_patient: int = 6, max_runs: int = 5) -> Scenario:
    zone_name = draw(st.sampled_from(ZONES))
    year = draw(st.integers(min_value=2025, max_value=2030))
    month = draw(st.integers(min_value=1, max_value=12))
    day = min(draw(st.one_of(st.integers(28, 31), st.integers(1, 31))), calendar.monthrange(year, month)[1])
    hour = draw(st.one_of(st.sampled_from([0, 23]), st.integers(0, 23)))
    minute = draw(st.sampled_from([0, 1, 30, 59]))
    subscribed_at = datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone_name)).astimezone(UTC)
    plan = PlanTerms(
        per_patient_cents=draw(st.sampled_from([450, 0, 1999])),
        minimum_cents=draw(st.sampled_from([0, 900, 15000])),
        setup_fee_cents=draw(st.sampled_from([0, 50000])),
        trial_days=draw(st.sampled_from([0, 0, 0, 1, 14])),
    )
    schedule = schedule_for(plan=plan, zone_name=zone_name, subscribed_at=subscribed_at)
    bounds = [schedule.boundary(k) for k in range(1, 5)]
    keys = [subscribed_at, schedule.first_start, *bounds]
    lo, hi = subscribed_at - timedelta(days=3), bounds[-1] + timedelta(days=1)
    span_us = (hi - lo) // MICROSECOND
    anywhere = st.integers(0, span_us).map(lambda us: lo + us * MICROSECOND)
    near_boundary = st.builds(lambda key, delta: key + delta, st.sampled_from(keys), st.sampled_from(NEAR))
    instants = st.one_of(near_boundary, anywhere)
    patient_count = draw(st.integers(min_value=1, max_value=max_patients))
    patient_instants = [
        sorted(set(draw(st.lists(instants, max_size=max_events_per_patient)))) for _ in range(patient_count)
    ]
    late_run = st.builds(lambda key, delay: key + delay, st.sampled_from(keys[1:]), st.sampled_from(LATE))
    runs = draw(st.lists(st.one_of(late_run, anywhere), max_size=max_runs))
    last = max([subscribed_at, bounds[2], *runs, *(t for ts in patient_instants for t in ts)])
    event_count = 1 + sum(len(ts) for ts in patient_instants) + len(set(runs))
    ranks = draw(st.permutations(range(event_count)))  # how ties at one instant are played
    return make_scenario(
        zone_name=zone_name,
        plan=plan,
        subscribed_at=subscribed_at,
        patient_instants=patient_instants,
        runs=runs,
        end=last + draw(st.sampled_from(LATE)),
        ranks=ranks,
    )


# --- Playing a scenario through the real services ---------------------------------------


@contextmanager
def rolled_back() -> Iterator[None]:
    """Each hypothesis example starts from the same empty database."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def plan_row(terms: PlanTerms) -> Plan:
    return PlanFactory(
        per_patient_cents=terms.per_patient_cents,
        minimum_cents=terms.minimum_cents,
        setup_fee_cents=terms.setup_fee_cents,
        trial_days=terms.trial_days,
    )


@dataclass
class PlayedOffice:
    """An office and what the test has done to it so far (the oracle's inputs)."""

    office: Office
    patients: list[Patient]
    subscribed: bool = False
    advanced_to: datetime | None = None  # the latest instant the engine caught up to
    catch_ups: list[datetime] = field(default_factory=list)  # runs and activations after subscribing
    histories: dict[int, list[list[datetime | None]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def create(cls, scenario: Scenario) -> PlayedOffice:
        office = OfficeFactory(timezone=scenario.zone_name)
        return cls(office=office, patients=[PatientFactory(office=office) for _ in range(scenario.patient_count)])

    def intervals(self) -> dict[int, list[Interval]]:
        return {p: [(a, d) for a, d in spans] for p, spans in self.histories.items()}

    def caught_up(self, instant: datetime) -> None:
        if self.subscribed:
            self.catch_ups.append(instant)
            self.advanced_to = max(instant, self.advanced_to or instant)

    def play(self, event: Event, plan: Plan) -> None:
        with at(event.at):
            if event.action == "subscribe":
                subscription_create(office=self.office, plan_code=plan.code)
                self.subscribed = True
                self.advanced_to = max(event.at, self.advanced_to or event.at)
            elif event.action == "activate":
                assert event.patient is not None
                patient_activate(patient=self.patients[event.patient])
                self.histories[event.patient].append([event.at, None])
                self.caught_up(event.at)
            elif event.action == "deactivate":
                assert event.patient is not None
                patient_deactivate(patient=self.patients[event.patient])
                self.histories[event.patient][-1][1] = event.at
            else:
                run = billing_run(office_ids=[self.office.pk])
                assert run.error_count == 0, list(run.errors.values_list("message", flat=True))
                self.caught_up(event.at)

    def expected(self, scenario: Scenario) -> ExpectedBilling:
        assert self.advanced_to is not None
        return expected_billing(
            plan=scenario.plan,
            zone_name=scenario.zone_name,
            subscribed_at=scenario.subscribed_at,
            histories=self.intervals(),
            as_of=self.advanced_to,
        )

    def index_of(self) -> dict[int, int]:
        return {p.pk: i for i, p in enumerate(self.patients)}

    def ambiguous_in_draft(self, start: datetime) -> frozenset[int]:
        """Patients deactivated exactly at the draft's start: a run that opened the draft at
        that same instant, just before the deactivation, may have given them a line the
        history no longer supports; finalization settles it (spec §5, "the draft is
        provisional")."""
        return frozenset(p for p, spans in self.histories.items() if any(d == start for _, d in spans))


# --- Views of the database, comparable with the oracle ----------------------------------


@dataclass(frozen=True)
class CycleView:
    start: datetime
    end: datetime
    status: str
    lines: dict[int, tuple[str, int]]  # patient index -> (line kind, amount in cents)
    minimum_adjustments: tuple[int, ...]
    total_cents: int


def line_problems(line: LineItem, refs: dict[int, str]) -> list[str]:
    problems = []
    if line.kind in (LineKind.RECURRING, LineKind.ACTIVATION):
        if (line.quantity, line.unit_amount_cents) != (1, line.amount_cents):
            problems.append(f"{line.kind} line priced {line.quantity} × {line.unit_amount_cents} = {line.amount_cents}")
        if line.patient_ref != refs[line.patient_id]:
            problems.append(f"line of patient {line.patient_id} carries ref {line.patient_ref}")
    elif line.kind != LineKind.MINIMUM_ADJUSTMENT:
        problems.append(f"unexpected {line.kind} line on a cycle invoice")
    return problems


def cycle_view(invoice: Invoice, played: PlayedOffice, ignore: frozenset[int] = frozenset()) -> CycleView:
    """A cycle invoice as the oracle sees it; patients in `ignore` are left out (and the
    total with them)."""
    index_of = played.index_of()
    refs = {patient.pk: patient.billing_ref for patient in played.patients}
    lines = list(invoice.lines.all())
    problems = [problem for line in lines for problem in line_problems(line, refs)]
    assert not problems, problems
    assert invoice.subtotal_cents == invoice.total_cents == sum(line.amount_cents for line in lines)
    patient_lines = {
        index_of[line.patient_id]: (line.kind, line.amount_cents)
        for line in lines
        if line.patient_id is not None and index_of[line.patient_id] not in ignore
    }
    return CycleView(
        start=invoice.period_start,
        end=invoice.period_end,
        status=invoice.status,
        lines=patient_lines,
        minimum_adjustments=tuple(line.amount_cents for line in lines if line.kind == LineKind.MINIMUM_ADJUSTMENT),
        total_cents=-1 if ignore else invoice.total_cents,
    )


def expected_view(exp: ExpectedCycleInvoice, status: str, ignore: frozenset[int] = frozenset()) -> CycleView:
    return CycleView(
        start=exp.start,
        end=exp.end,
        status=status,
        lines={p: (kind, exp.unit_cents) for p, kind in exp.lines.items() if p not in ignore},
        minimum_adjustments=(exp.minimum_adjustment_cents,) if exp.minimum_adjustment_cents else (),
        total_cents=-1 if ignore else exp.total_cents,
    )


def assert_matches_model(played: PlayedOffice, scenario: Scenario) -> ExpectedBilling:
    expected = played.expected(scenario)
    office = Office.objects.get(pk=played.office.pk)
    assert office.subscription_status == expected.subscription_status
    assert office.billing_cycle_anchor_date == expected.schedule.anchor
    assert office.trial_ends_at == expected.schedule.trial_ends_at

    cycles = list(
        Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE).select_related("plan").order_by("period_start")
    )
    finalized = [i for i in cycles if i.status != InvoiceStatus.DRAFT]
    drafts = [i for i in cycles if i.status == InvoiceStatus.DRAFT]
    assert [cycle_view(i, played) for i in finalized] == [expected_view(c, c.status) for c in expected.finalized]
    if expected.draft is None:
        assert drafts == []
    else:
        assert len(drafts) == 1
        ignore = played.ambiguous_in_draft(expected.draft.start)
        draft = expected.draft
        assert cycle_view(drafts[0], played, ignore) == expected_view(draft, InvoiceStatus.DRAFT, ignore)
        assert not cycles or cycles[-1] == drafts[0]

    setup = list(Invoice.objects.filter(office=office, is_setup_fee=True))
    if expected.setup_fee_cents is None:
        assert setup == []
    else:
        assert len(setup) == 1
        assert setup[0].kind == InvoiceKind.ONE_OFF and setup[0].status == InvoiceStatus.OPEN
        assert [(li.kind, li.amount_cents) for li in setup[0].lines.all()] == [
            (LineKind.SETUP_FEE, expected.setup_fee_cents)
        ]
        assert setup[0].total_cents == expected.setup_fee_cents
    return expected


def assert_history_recorded_as_played(played: PlayedOffice) -> None:
    """No timestamp was moved by the services (events were strictly ordered per patient)."""
    stored: dict[int, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    index_of = played.index_of()
    for row in ActivationInterval.objects.filter(office=played.office).order_by("activated_at"):
        stored[index_of[row.patient_id]].append((row.activated_at, row.deactivated_at))
    assert dict(stored) == {p: spans for p, spans in played.intervals().items() if spans}


NUMBER = re.compile(r"(?P<prefix>.+)-(?P<year>\d{4})-(?P<seq>\d{6})")


def parse_number(number: str | None) -> tuple[int, int]:
    assert number is not None
    match = NUMBER.fullmatch(number)
    assert match and match["prefix"] == django_settings.INVOICE_NUMBER_PREFIX, number
    return int(match["year"]), int(match["seq"])


def assert_numbers_gapless_in_finalization_order() -> None:
    """INV-YYYY-000001.. per UTC year of finalization, no gap, no repeat, following the
    order of finalization; each office's cycles are numbered in period order, after its
    setup fee (spec §6, §7)."""
    rows = list(Invoice.objects.exclude(status=InvoiceStatus.DRAFT))
    by_year: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        year, seq = parse_number(row.number)
        assert year == row.finalized_at.astimezone(UTC).year
        by_year[year].append(seq)
    for year, seqs in by_year.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), (year, sorted(seqs))
        assert InvoiceNumberSequence.objects.get(year=year).last_value == len(seqs)
    in_number_order = sorted(rows, key=lambda r: parse_number(r.number))
    finalized_at = [r.finalized_at for r in in_number_order]
    assert finalized_at == sorted(finalized_at)
    by_office: dict[int, list[Invoice]] = defaultdict(list)
    for row in in_number_order:
        by_office[row.office_id].append(row)
    for invoices in by_office.values():
        starts = [i.period_start for i in invoices if i.kind == InvoiceKind.CYCLE]
        assert starts == sorted(starts)
        kinds = ["setup" if i.is_setup_fee else i.kind for i in invoices]
        assert "setup" not in kinds or kinds.index("setup") == 0


def expected_numbers(played: PlayedOffice, expected: ExpectedBilling) -> dict[Any, tuple[datetime, str]]:
    """With one office, the exact number and finalization instant of every invoice: a
    cycle is finalized by the first catch-up (run or activation) at or after its end; the
    setup fee when the first cycle opens (spec §6, §7)."""

    def first_catch_up_from(instant: datetime) -> datetime:
        return min(t for t in played.catch_ups if t >= instant)

    schedule = expected.schedule
    entries: list[tuple[datetime, int, datetime, Any]] = []
    if expected.setup_fee_cents is not None:
        opened = schedule.first_start if schedule.trial_ends_at is None else first_catch_up_from(schedule.first_start)
        entries.append((opened, 0, schedule.first_start, "setup"))
    for cycle in expected.finalized:
        entries.append((first_catch_up_from(cycle.end), 1, cycle.start, cycle.start))
    numbers: dict[Any, tuple[datetime, str]] = {}
    seq: dict[int, int] = defaultdict(int)
    for finalized_at, _, _, key in sorted(entries):
        year = finalized_at.astimezone(UTC).year
        seq[year] += 1
        numbers[key] = (finalized_at, f"{django_settings.INVOICE_NUMBER_PREFIX}-{year}-{seq[year]:06d}")
    return numbers


def actual_numbers(office: Office) -> dict[Any, tuple[datetime, str]]:
    found: dict[Any, tuple[datetime, str]] = {}
    for inv in Invoice.objects.filter(office=office).exclude(status=InvoiceStatus.DRAFT):
        key = "setup" if inv.is_setup_fee else inv.period_start
        found[key] = (inv.finalized_at, inv.number)
    return found


# --- Explicit examples (always run first) -----------------------------------------------

_SANTIAGO_SKIPS_MIDNIGHT = utc(2026, 9, 6, 4)  # 2026-09-06 01:00 -03:00, first instant of the day
SANTIAGO_EXAMPLE = make_scenario(
    zone_name="America/Santiago",
    plan=PlanTerms(per_patient_cents=450, minimum_cents=900, setup_fee_cents=50000),
    subscribed_at=utc(2026, 8, 6, 14),  # anchor 2026-08-06
    patient_instants=[
        [utc(2026, 8, 1), _SANTIAGO_SKIPS_MIDNIGHT - MICROSECOND],
        [_SANTIAGO_SKIPS_MIDNIGHT],
        [_SANTIAGO_SKIPS_MIDNIGHT - timedelta(minutes=5), _SANTIAGO_SKIPS_MIDNIGHT + timedelta(minutes=5)],
    ],
    runs=[_SANTIAGO_SKIPS_MIDNIGHT],  # punctual at the skipped midnight
    end=utc(2026, 11, 8, 12),  # catches up the Oct 6 and Nov 6 boundaries
)
ANCHOR_31_EXAMPLE = make_scenario(
    zone_name="America/Chicago",
    plan=PlanTerms(per_patient_cents=450, minimum_cents=15000),
    subscribed_at=utc(2026, 2, 1, 5, 30),  # 2026-01-31 23:30 CST: anchor 31
    patient_instants=[
        [utc(2026, 1, 20), utc(2026, 2, 28, 6)],  # deactivated exactly at the Feb 28 boundary (00:00 CST)
        [utc(2026, 3, 31, 5), utc(2026, 4, 2)],  # activated exactly at the Mar 31 boundary (00:00 CDT)
    ],
    runs=[utc(2026, 3, 2)],
    end=utc(2026, 5, 3),
)
NEW_YEAR_EXAMPLE = make_scenario(
    zone_name="Australia/Sydney",
    plan=PlanTerms(per_patient_cents=1999, setup_fee_cents=50000, trial_days=14),
    subscribed_at=utc(2026, 12, 1, 1),  # 12:00 AEDT; the trial ends 2026-12-15 00:00 local (12-14 13:00Z)
    patient_instants=[
        [utc(2026, 11, 20)],
        [utc(2026, 12, 14, 12, 59), utc(2027, 1, 20)],
        [utc(2026, 12, 10), utc(2026, 12, 20)],  # deactivated after the trial end, before the late run
    ],
    runs=[utc(2027, 1, 3)],  # processes the trial end 19 days late, in the next UTC year
    end=utc(2027, 2, 20),
)
# A punctual run opens the cycle at 2026-02-10 00:00 and, at that same instant, the patient
# is deactivated; reactivated two days later. By the history the patient was not active at
# the instant C.start, so C's line is an `activation` line, as a late run bills it.
RUN_THEN_DEACTIVATION_EXAMPLE = make_scenario(
    zone_name="UTC",
    plan=PlanTerms(per_patient_cents=450),
    subscribed_at=utc(2026, 1, 10, 12),
    patient_instants=[[utc(2026, 1, 5), utc(2026, 2, 10), utc(2026, 2, 12)]],
    runs=[utc(2026, 2, 10)],
    end=utc(2026, 3, 10, 1),
    ranks=[0, 1, 3, 4, 2],  # at 02-10 00:00 the run comes first, then the deactivation
)


# --- Properties -------------------------------------------------------------------------


def play(scenario: Scenario) -> PlayedOffice:
    plan = plan_row(scenario.plan)
    played = PlayedOffice.create(scenario)
    for event in scenario.events:
        played.play(event, plan)
    return played


def test_it_takes_a_line_kind_from_the_history_when_a_run_and_a_deactivation_share_an_instant():
    scenario = RUN_THEN_DEACTIVATION_EXAMPLE
    assert [e.action for e in scenario.events] == ["activate", "subscribe", "run", "deactivate", "activate", "run"]
    played = play(scenario)
    expected = assert_matches_model(played, scenario)
    assert expected.finalized[1].lines == {0: "activation"}  # what the assertion above compared with


@PROPERTY_SETTINGS
@given(scenario=scenarios())
@example(scenario=SANTIAGO_EXAMPLE)
@example(scenario=ANCHOR_31_EXAMPLE)
@example(scenario=NEW_YEAR_EXAMPLE)
@example(scenario=RUN_THEN_DEACTIVATION_EXAMPLE)
def test_it_bills_like_the_reference_model_after_every_step(scenario):
    """After every event, finalized cycles, the open draft and the setup fee are what the
    oracle computes from the history; at the end, every invoice carries exactly the number
    its finalization instant gives it (gapless per UTC year, in finalization order)."""
    with rolled_back():
        plan = plan_row(scenario.plan)
        played = PlayedOffice.create(scenario)
        for event in scenario.events:
            played.play(event, plan)
            if played.subscribed:
                expected = assert_matches_model(played, scenario)
        assert_history_recorded_as_played(played)
        assert actual_numbers(played.office) == expected_numbers(played, expected)
        assert_numbers_gapless_in_finalization_order()


def db_snapshot() -> tuple[list[dict[str, Any]], ...]:
    """Every billing row, field by field (the audit trail, which records each run, aside)."""
    return (
        list(Invoice.objects.order_by("pk").values()),
        list(LineItem.objects.order_by("pk").values()),
        list(InvoiceNumberSequence.objects.order_by("year").values()),
        list(Office.objects.order_by("pk").values()),
        list(ActivationInterval.objects.order_by("pk").values()),
    )


@PROPERTY_SETTINGS
@given(scenario=scenarios(max_patients=3, max_runs=4))
@example(scenario=SANTIAGO_EXAMPLE)
def test_it_changes_nothing_when_a_run_repeats_at_the_same_as_of(scenario):
    """After every run, a second run at the same as-of finds nothing due and leaves every
    invoice, line, number sequence, office and interval row as it was (spec §6)."""
    with rolled_back():
        plan = plan_row(scenario.plan)
        played = PlayedOffice.create(scenario)
        for event in scenario.events:
            played.play(event, plan)
            if event.action != "run":
                continue
            before = db_snapshot()
            with at(event.at):
                again = billing_run(as_of=event.at, office_ids=[played.office.pk])
            assert db_snapshot() == before
            figures = (
                "offices_due",
                "invoices_finalized",
                "invoices_opened",
                "lines_created",
                "amount_finalized_cents",
            )
            assert {name: getattr(again, name) for name in figures} == dict.fromkeys(figures, 0)
            assert again.error_count == 0
        assert_matches_model(played, scenario)


def comparable_invoices(played: PlayedOffice, ignore_in_draft: frozenset[int]) -> list[tuple[Any, ...]]:
    """Everything about an office's invoices but numbers and instants of finalization
    (a late run may number differently, spec §6), patients by index, refs masked."""
    index_of = played.index_of()
    ref_of = {p.pk: p.billing_ref for p in played.patients}
    views = []
    invoices = Invoice.objects.filter(office=played.office).order_by("kind", "period_start", "pk")
    for inv in invoices:
        ignore = ignore_in_draft if inv.status == InvoiceStatus.DRAFT else frozenset()
        lines = sorted(
            (
                line.kind,
                index_of.get(line.patient_id, -1),
                line.description.replace(ref_of.get(line.patient_id, "\0"), "<ref>"),
                line.quantity,
                line.unit_amount_cents,
                line.amount_cents,
            )
            for line in inv.lines.all()
            if line.patient_id is None or index_of[line.patient_id] not in ignore
        )
        totals = (None, None) if ignore else (inv.subtotal_cents, inv.total_cents)
        views.append(
            (
                inv.kind,
                inv.is_setup_fee,
                inv.status,
                inv.currency,
                inv.plan_id,
                inv.period_start,
                inv.period_end,
                totals,
                inv.push_state,
                lines,
            )
        )
    return views


@PROPERTY_SETTINGS
@given(scenario=scenarios(max_patients=3), runs_first=st.booleans())
@example(scenario=ANCHOR_31_EXAMPLE, runs_first=False)
@example(scenario=NEW_YEAR_EXAMPLE, runs_first=True)
@example(scenario=RUN_THEN_DEACTIVATION_EXAMPLE, runs_first=True)
def test_it_gives_one_late_run_the_same_invoices_as_punctual_runs(scenario, runs_first):
    """Office P is billed by a run exactly at every boundary (and the trial end), before or
    after the patient events of that instant; office L by one run at the scenario's end
    only. Both live the same patient histories. Their invoices are equal in everything but
    numbers (spec §6, §11 example 4)."""
    with rolled_back():
        plan = plan_row(scenario.plan)
        punctual, late = PlayedOffice.create(scenario), PlayedOffice.create(scenario)
        run_rank = -1 if runs_first else 1
        merged = [(e.at, 0, i, e, late) for i, e in enumerate(scenario.events) if e.action != "run"]
        merged += [(e.at, 0, i, e, punctual) for i, e in enumerate(scenario.events) if e.action != "run"]
        merged += [(b, run_rank, 0, Event(b, "run"), punctual) for b in scenario.boundaries()]
        merged.append((scenario.end, 2, 0, Event(scenario.end, "run"), late))
        for *_, event, office in sorted(merged, key=lambda m: m[:3]):
            office.play(event, plan)

        assert_matches_model(late, scenario)
        draft = late.expected(scenario).draft
        assert draft is not None
        ignore = punctual.ambiguous_in_draft(draft.start)
        assert comparable_invoices(punctual, ignore) == comparable_invoices(late, ignore)
        assert_numbers_gapless_in_finalization_order()
