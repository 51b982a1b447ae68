"""A small, obviously correct oracle of cycle billing (spec §4–§7), for property tests.

It is plain Python over `zoneinfo` and `calendar` and imports nothing from the project
(not `billing.engine.cycles`, not `billing.engine`), so agreeing with them is a real
cross-check. It favours clarity over speed: local midnights are found by bisection over
UTC instants, billability by scanning every interval.

Scope: one office, one plan (no plan changes, no cancellation), patients identified by
any hashable key, activation intervals half-open `[activated_at, deactivated_at)`."""

from __future__ import annotations

import calendar
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

RECURRING = "recurring"
ACTIVATION = "activation"

Interval = tuple[datetime, datetime | None]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class PlanTerms:
    per_patient_cents: int
    minimum_cents: int = 0
    setup_fee_cents: int = 0
    trial_days: int = 0


# --- Calendar ---------------------------------------------------------------------------


def local_date_of(instant: datetime, tz: ZoneInfo) -> date:
    return instant.astimezone(tz).date()


def first_instant_of(day: date, tz: ZoneInfo) -> datetime:
    """The earliest instant (UTC) whose local date in `tz` is `day` (spec §2).

    That is local 00:00; where DST skips midnight, the first instant after the gap; where
    midnight happens twice, the first of the two. Found by bisection: for the zones and
    years tested, the local date never goes backwards as UTC time advances, so the
    instants whose local date is ≥ `day` form a suffix of the time line."""
    midnight_as_if_utc = datetime.combine(day, time(0), tzinfo=UTC)
    lo = midnight_as_if_utc - timedelta(days=2)  # UTC offsets are within ±14 h: local date < day
    hi = midnight_as_if_utc + timedelta(days=1)  # ... and here local date ≥ day
    assert local_date_of(lo, tz) < day <= local_date_of(hi, tz)
    lo_us = (lo - _EPOCH) // _MICROSECOND
    hi_us = (hi - _EPOCH) // _MICROSECOND
    while hi_us - lo_us > 1:
        mid_us = (lo_us + hi_us) // 2
        if local_date_of(_EPOCH + timedelta(microseconds=mid_us), tz) >= day:
            hi_us = mid_us
        else:
            lo_us = mid_us
    first = _EPOCH + timedelta(microseconds=hi_us)
    assert local_date_of(first, tz) == day, f"{day} does not exist in {tz}"
    return first


def cycle_start_date(anchor: date, months_later: int) -> date:
    """The anchor's day of month, `months_later` months on, clamped to short months (§4)."""
    month_index = anchor.year * 12 + anchor.month - 1 + months_later
    year, month = month_index // 12, month_index % 12 + 1
    last_day = calendar.monthrange(year, month)[1]
    return date(year, month, min(anchor.day, last_day))


@dataclass(frozen=True)
class Schedule:
    """Where an office's cycles fall, from the subscription instant and the plan's trial."""

    tz: ZoneInfo
    anchor: date
    first_start: datetime  # the subscription instant, or the trial end
    trial_ends_at: datetime | None

    def boundary(self, k: int) -> datetime:
        """Boundary k ≥ 1: 00:00 local on the anchor day k months after the anchor."""
        assert k >= 1
        return first_instant_of(cycle_start_date(self.anchor, k), self.tz)

    def cycles(self) -> Iterator[tuple[datetime, datetime]]:
        """Every cycle [start, end), in order, without end."""
        start, k = self.first_start, 1
        while True:
            end = self.boundary(k)
            yield start, end
            start, k = end, k + 1


def schedule_for(*, plan: PlanTerms, zone_name: str, subscribed_at: datetime) -> Schedule:
    """Spec §4: without a trial the anchor is the local date of subscription and the first
    cycle starts at the subscription instant; with one, the trial ends at 00:00 local
    `trial_days` after the local subscription date, which is the anchor."""
    tz = ZoneInfo(zone_name)
    subscribed_on = local_date_of(subscribed_at, tz)
    if plan.trial_days > 0:
        anchor = subscribed_on + timedelta(days=plan.trial_days)
        trial_ends_at = first_instant_of(anchor, tz)
        return Schedule(tz=tz, anchor=anchor, first_start=trial_ends_at, trial_ends_at=trial_ends_at)
    return Schedule(tz=tz, anchor=subscribed_on, first_start=subscribed_at, trial_ends_at=None)


# --- Activation history -----------------------------------------------------------------


def known_at(intervals: Sequence[Interval], as_of: datetime) -> list[Interval]:
    """The history as recorded at `as_of`: later activations do not exist yet, later
    deactivations have not happened (the interval is still open)."""
    known: list[Interval] = []
    for activated_at, deactivated_at in intervals:
        if activated_at > as_of:
            continue
        known.append((activated_at, deactivated_at if deactivated_at is not None and deactivated_at <= as_of else None))
    return known


def active_at(intervals: Sequence[Interval], instant: datetime) -> bool:
    return any(a <= instant and (d is None or d > instant) for a, d in intervals)


def billable_in(intervals: Sequence[Interval], start: datetime, end: datetime) -> bool:
    """Active at any instant of [start, end) (spec §5)."""
    return any(a < end and (d is None or d > start) for a, d in intervals)


def line_kind(intervals: Sequence[Interval], start: datetime) -> str:
    """`recurring` if active at the instant C.start, else `activation` (spec §5)."""
    return RECURRING if active_at(intervals, start) else ACTIVATION


# --- Invoices ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedCycleInvoice:
    start: datetime
    end: datetime
    lines: dict[Hashable, str]  # patient key -> line kind
    unit_cents: int
    minimum_adjustment_cents: int = 0  # 0: no adjustment line

    @property
    def patient_cents(self) -> int:
        return self.unit_cents * len(self.lines)

    @property
    def total_cents(self) -> int:
        return self.patient_cents + self.minimum_adjustment_cents

    @property
    def status(self) -> str:
        """A zero-total cycle invoice is finalized as paid (spec §6)."""
        return "paid" if self.total_cents == 0 else "open"


@dataclass(frozen=True)
class ExpectedBilling:
    schedule: Schedule
    subscription_status: str
    setup_fee_cents: int | None  # None: no setup-fee invoice (not yet, or the plan has none)
    finalized: list[ExpectedCycleInvoice] = field(default_factory=list)
    draft: ExpectedCycleInvoice | None = None


def patient_lines(histories: Mapping[Hashable, Sequence[Interval]], start: datetime, end: datetime) -> dict:
    """One line per billable patient of [start, end), with its kind (spec §5)."""
    return {
        key: line_kind(intervals, start) for key, intervals in histories.items() if billable_in(intervals, start, end)
    }


def expected_billing(
    *,
    plan: PlanTerms,
    zone_name: str,
    subscribed_at: datetime,
    histories: Mapping[Hashable, Sequence[Interval]],
    as_of: datetime,
) -> ExpectedBilling:
    """What should exist once the office has been billed up to `as_of` (spec §4–§7).

    Cycles with `end <= as_of` are finalized: one line per billable patient, a minimum
    adjustment for any shortfall below the plan minimum, total = their sum. The cycle that
    contains `as_of` is the open draft: a `recurring` line for each patient active at its
    start, an `activation` line for each one activated since. Nothing exists before the
    first cycle starts (a trial bills nothing)."""
    assert as_of >= subscribed_at
    schedule = schedule_for(plan=plan, zone_name=zone_name, subscribed_at=subscribed_at)
    if as_of < schedule.first_start:
        return ExpectedBilling(schedule=schedule, subscription_status="trialing", setup_fee_cents=None)
    known = {key: known_at(intervals, as_of) for key, intervals in histories.items()}
    finalized: list[ExpectedCycleInvoice] = []
    for start, end in schedule.cycles():
        lines = patient_lines(known, start, end)
        if end > as_of:
            draft = ExpectedCycleInvoice(start=start, end=end, lines=lines, unit_cents=plan.per_patient_cents)
            break
        shortfall = max(0, plan.minimum_cents - plan.per_patient_cents * len(lines))
        finalized.append(
            ExpectedCycleInvoice(
                start=start,
                end=end,
                lines=lines,
                unit_cents=plan.per_patient_cents,
                minimum_adjustment_cents=shortfall,
            )
        )
    return ExpectedBilling(
        schedule=schedule,
        subscription_status="active",
        setup_fee_cents=plan.setup_fee_cents if plan.setup_fee_cents > 0 else None,
        finalized=finalized,
        draft=draft,
    )
