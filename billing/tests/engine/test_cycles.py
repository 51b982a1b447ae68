"""Cycle boundaries in an office's time zone (spec §2, §4): billing/engine/cycles.py."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.engine.cycles import (
    Cycle,
    add_months_clamped,
    boundary,
    local_date,
    local_midnight,
    next_boundary_after,
    trial_end,
    zone,
)
from config.errors import ApplicationError

UTC_ZONE = ZoneInfo("UTC")
CHICAGO = ZoneInfo("America/Chicago")
SANTIAGO = ZoneInfo("America/Santiago")
HAVANA = ZoneInfo("America/Havana")
MICROSECOND = timedelta(microseconds=1)

ZONES = (
    "UTC",
    "America/Chicago",
    "America/Santiago",  # DST skips midnight (September)
    "America/Havana",  # DST skips midnight (March) and repeats it (November)
    "Australia/Sydney",
    "Asia/Kolkata",  # +05:30, no DST
    "Europe/London",
    "Pacific/Chatham",  # +12:45 / +13:45
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def boundary_dates(anchor: date, months: int, tz: ZoneInfo) -> list[date]:
    return [local_date(boundary(anchor, k, tz), tz) for k in range(1, months + 1)]


# --- Anchor days and short months (spec §4, §11 example 2) ------------------------------


def test_it_clamps_anchor_31_to_month_ends_and_returns_to_31():
    assert boundary_dates(date(2026, 1, 31), 4, UTC_ZONE) == [
        date(2026, 2, 28),
        date(2026, 3, 31),
        date(2026, 4, 30),
        date(2026, 5, 31),
    ]
    assert [boundary(date(2026, 1, 31), k, UTC_ZONE) for k in (1, 2)] == [utc(2026, 2, 28), utc(2026, 3, 31)]


def test_it_starts_the_february_cycle_on_the_29th_in_a_leap_year():
    assert boundary_dates(date(2028, 1, 31), 2, UTC_ZONE) == [date(2028, 2, 29), date(2028, 3, 31)]
    assert boundary(date(2028, 1, 31), 1, UTC_ZONE) == utc(2028, 2, 29)


@pytest.mark.parametrize("anchor_day", [29, 30])
def test_it_clamps_anchor_29_and_30_to_february_28_in_a_common_year(anchor_day):
    anchor = date(2026, 1, anchor_day)
    assert boundary_dates(anchor, 3, UTC_ZONE) == [
        date(2026, 2, 28),
        date(2026, 3, anchor_day),
        date(2026, 4, anchor_day),
    ]


def test_it_keeps_anchor_29_on_the_29th_in_a_leap_february():
    assert boundary_dates(date(2028, 1, 29), 2, UTC_ZONE) == [date(2028, 2, 29), date(2028, 3, 29)]


def test_it_counts_months_across_the_year_end():
    assert add_months_clamped(date(2026, 12, 31), 2) == date(2027, 2, 28)
    assert add_months_clamped(date(2026, 11, 30), 3) == date(2027, 2, 28)
    assert add_months_clamped(date(2027, 12, 31), 2) == date(2028, 2, 29)
    assert add_months_clamped(date(2026, 12, 15), 1) == date(2027, 1, 15)


# --- Half-open cycles: next_boundary_after ----------------------------------------------


def test_it_puts_an_instant_exactly_on_a_boundary_into_the_next_cycle():
    anchor = date(2026, 3, 10)
    on_boundary = datetime(2026, 4, 10, tzinfo=CHICAGO)
    assert next_boundary_after(anchor, on_boundary, CHICAGO) == datetime(2026, 5, 10, tzinfo=CHICAGO)
    cycle = Cycle(start=on_boundary, end=datetime(2026, 5, 10, tzinfo=CHICAGO))
    assert cycle.contains(on_boundary)
    assert not Cycle(start=datetime(2026, 3, 10, 14, tzinfo=CHICAGO), end=on_boundary).contains(on_boundary)


def test_it_keeps_the_instant_one_microsecond_before_a_boundary_in_the_ending_cycle():
    anchor = date(2026, 3, 10)
    just_before = datetime(2026, 4, 10, tzinfo=CHICAGO) - MICROSECOND
    assert next_boundary_after(anchor, just_before, CHICAGO) == datetime(2026, 4, 10, tzinfo=CHICAGO)
    assert Cycle(start=datetime(2026, 3, 10, 14, tzinfo=CHICAGO), end=datetime(2026, 4, 10, tzinfo=CHICAGO)).contains(
        just_before
    )


def test_it_finds_the_first_boundary_after_the_subscription_instant():
    # Subscribed 2026-03-10 14:00 Chicago (spec §11 example 1): the first cycle ends 04-10 00:00 local.
    subscribed = datetime(2026, 3, 10, 14, tzinfo=CHICAGO)
    assert next_boundary_after(date(2026, 3, 10), subscribed, CHICAGO) == datetime(2026, 4, 10, tzinfo=CHICAGO)


def test_it_finds_the_next_boundary_across_the_year_end():
    anchor = date(2026, 11, 15)
    assert next_boundary_after(anchor, datetime(2026, 12, 20, 9, tzinfo=CHICAGO), CHICAGO) == datetime(
        2027, 1, 15, tzinfo=CHICAGO
    )
    new_year = datetime(2027, 1, 1, tzinfo=CHICAGO)
    assert next_boundary_after(anchor, new_year - MICROSECOND, CHICAGO) == datetime(2027, 1, 15, tzinfo=CHICAGO)
    # Anchor 31 over the year end: Dec 31 → Jan 31 → Feb 28.
    assert next_boundary_after(date(2026, 10, 31), utc(2026, 12, 31), UTC_ZONE) == utc(2027, 1, 31)
    assert next_boundary_after(date(2026, 10, 31), utc(2026, 12, 31) - MICROSECOND, UTC_ZONE) == utc(2026, 12, 31)
    assert next_boundary_after(date(2026, 10, 31), utc(2027, 1, 31), UTC_ZONE) == utc(2027, 2, 28)


def test_it_finds_the_next_boundary_long_after_the_anchor():
    anchor = date(2026, 1, 31)
    assert next_boundary_after(anchor, utc(2030, 2, 27, 23, 59), UTC_ZONE) == utc(2030, 2, 28)
    assert next_boundary_after(anchor, utc(2030, 2, 28), UTC_ZONE) == utc(2030, 3, 31)


# --- DST: boundaries stay at local 00:00 (spec §2) --------------------------------------


def test_it_keeps_local_midnight_across_chicago_spring_forward():
    anchor = date(2026, 2, 10)  # DST starts 2026-03-08 02:00 local
    feb, mar = boundary(anchor, 0, CHICAGO), boundary(anchor, 1, CHICAGO)
    assert feb == utc(2026, 2, 10, 6) and mar == utc(2026, 3, 10, 5)
    assert feb.astimezone(CHICAGO).utcoffset() == timedelta(hours=-6)
    assert mar.astimezone(CHICAGO).utcoffset() == timedelta(hours=-5)
    assert mar.astimezone(CHICAGO).time().isoformat() == "00:00:00"
    assert mar - feb == timedelta(days=28) - timedelta(hours=1)  # the cycle is an hour short


def test_it_keeps_local_midnight_across_chicago_fall_back():
    anchor = date(2026, 10, 10)  # DST ends 2026-11-01 02:00 local
    oct_, nov = boundary(anchor, 0, CHICAGO), boundary(anchor, 1, CHICAGO)
    assert oct_ == utc(2026, 10, 10, 5) and nov == utc(2026, 11, 10, 6)
    assert oct_.astimezone(CHICAGO).utcoffset() - nov.astimezone(CHICAGO).utcoffset() == timedelta(hours=1)
    assert nov - oct_ == timedelta(days=31, hours=1)  # the cycle is an hour long
    assert next_boundary_after(anchor, utc(2026, 11, 10, 5, 30), CHICAGO) == nov  # 23:30 CST on Nov 9


def test_it_uses_local_midnight_on_the_day_of_a_chicago_transition():
    # Transitions happen at 02:00, so midnight itself exists on both transition days.
    assert boundary(date(2026, 2, 8), 1, CHICAGO) == utc(2026, 3, 8, 6)  # still CST at midnight
    assert boundary(date(2026, 10, 1), 1, CHICAGO) == utc(2026, 11, 1, 5)  # still CDT at midnight


def test_it_starts_the_cycle_at_the_first_instant_of_the_day_when_santiago_skips_midnight():
    # 2026-09-06 00:00 -04:00 does not exist: clocks jump to 01:00 -03:00.
    anchor = date(2026, 8, 6)
    start = boundary(anchor, 1, SANTIAGO)
    assert start == utc(2026, 9, 6, 4)
    local = start.astimezone(SANTIAGO)
    assert (local.date(), local.hour, local.minute, local.utcoffset()) == (date(2026, 9, 6), 1, 0, timedelta(hours=-3))
    assert (start - MICROSECOND).astimezone(SANTIAGO).date() == date(2026, 9, 5)
    assert local_midnight(date(2026, 9, 6), SANTIAGO) == start
    assert next_boundary_after(anchor, start - MICROSECOND, SANTIAGO) == start
    assert next_boundary_after(anchor, start, SANTIAGO) == utc(2026, 10, 6, 3)


def test_it_uses_local_midnight_when_santiago_repeats_the_last_hour_of_saturday():
    # 2026-04-05 03:00Z: clocks go back from 00:00 -03 to 23:00 -04 on Apr 4; midnight of Apr 5 happens once.
    start = boundary(date(2026, 3, 5), 1, SANTIAGO)
    assert start == utc(2026, 4, 5, 4)
    assert start.astimezone(SANTIAGO).time().isoformat() == "00:00:00"


def test_it_takes_the_first_of_two_midnights_when_havana_repeats_midnight():
    # 2026-11-01 05:00Z: clocks go back from 01:00 -04 to 00:00 -05; 00:00 happens twice.
    start = boundary(date(2026, 10, 1), 1, HAVANA)
    assert start == utc(2026, 11, 1, 4)
    assert (start - MICROSECOND).astimezone(HAVANA).date() == date(2026, 10, 31)
    # ... and the first instant of the day after a skipped Havana midnight (2026-03-08).
    assert boundary(date(2026, 2, 8), 1, HAVANA) == utc(2026, 3, 8, 5)


# --- Trials (spec §4) -------------------------------------------------------------------


def test_it_ends_a_trial_at_local_midnight_n_days_after_the_local_subscription_date():
    subscribed = datetime(2026, 3, 10, 14, tzinfo=CHICAGO)
    assert trial_end(subscribed, 14, CHICAGO) == datetime(2026, 3, 24, tzinfo=CHICAGO)
    assert trial_end(subscribed, 14, CHICAGO) - subscribed < timedelta(days=14)


def test_it_counts_trial_days_from_the_local_date_not_the_utc_date():
    late_evening = datetime(2026, 3, 1, 22, tzinfo=CHICAGO)  # already March 2 in UTC
    assert late_evening.astimezone(UTC).date() == date(2026, 3, 2)
    assert local_date(late_evening, CHICAGO) == date(2026, 3, 1)
    # The trial spans the spring-forward change: it ends at 00:00 CDT.
    assert trial_end(late_evening, 10, CHICAGO) == utc(2026, 3, 11, 5)


def test_it_ends_a_trial_at_the_first_instant_of_a_day_without_midnight():
    subscribed = datetime(2026, 8, 30, 10, tzinfo=SANTIAGO)
    assert trial_end(subscribed, 7, SANTIAGO) == utc(2026, 9, 6, 4)


def test_it_ends_a_zero_day_trial_at_the_start_of_the_subscription_date():
    subscribed = datetime(2026, 6, 15, 9, 30, tzinfo=CHICAGO)
    assert trial_end(subscribed, 0, CHICAGO) == datetime(2026, 6, 15, tzinfo=CHICAGO)


def test_it_refuses_an_unknown_time_zone():
    with pytest.raises(ApplicationError):
        zone("Mars/Olympus_Mons")


# --- Properties -------------------------------------------------------------------------

anchors = st.dates(min_value=date(2020, 1, 1), max_value=date(2040, 12, 31))
anchor_days = st.integers(min_value=1, max_value=31)
years = st.integers(min_value=2020, max_value=2040)
months = st.integers(min_value=1, max_value=12)


def midnight_exists(day: date, tz: ZoneInfo) -> bool:
    naive = datetime(day.year, day.month, day.day)
    for fold in (0, 1):
        candidate = naive.replace(tzinfo=tz, fold=fold)
        if candidate.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive:
            return True
    return False


@st.composite
def any_anchor(draw: st.DrawFn) -> date:
    """Any anchor day 1..31 in a month that has it, 2020..2040."""
    year, month, day = draw(years), draw(months), draw(anchor_days)
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


@settings(max_examples=200, deadline=None)
@given(anchor=st.one_of(any_anchor(), anchors), zone_name=st.sampled_from(ZONES))
def test_it_places_every_boundary_at_the_first_instant_of_the_clamped_anchor_day(anchor, zone_name):
    tz = ZoneInfo(zone_name)
    previous = boundary(anchor, 0, tz)
    for k in range(1, 15):
        current = boundary(anchor, k, tz)
        assert current > previous
        index = anchor.year * 12 + anchor.month - 1 + k
        year, month = index // 12, index % 12 + 1
        expected_day = date(year, month, min(anchor.day, calendar.monthrange(year, month)[1]))
        local = current.astimezone(tz)
        assert local.date() == expected_day
        # The first instant of that local date: a microsecond earlier is still the day before.
        assert (current - MICROSECOND).astimezone(tz).date() < expected_day
        if midnight_exists(expected_day, tz):
            assert local.time().isoformat() == "00:00:00"
        else:
            assert local.time() > datetime.min.time()
        previous = current


@settings(max_examples=200, deadline=None)
@given(
    anchor=any_anchor(),
    zone_name=st.sampled_from(ZONES),
    month_offset=st.integers(min_value=0, max_value=13),
    delta=st.one_of(
        st.sampled_from([timedelta(0), -MICROSECOND, MICROSECOND, timedelta(hours=-1), timedelta(hours=1)]),
        st.integers(min_value=-40 * 86_400, max_value=40 * 86_400).map(lambda s: timedelta(seconds=s)),
    ),
)
def test_it_returns_the_first_boundary_strictly_after_any_instant(anchor, zone_name, month_offset, delta):
    tz = ZoneInfo(zone_name)
    instant = boundary(anchor, month_offset, tz) + delta
    boundaries = [boundary(anchor, k, tz) for k in range(1, 17)]
    expected = min(b for b in boundaries if b > instant)
    assert next_boundary_after(anchor, instant, tz) == expected
