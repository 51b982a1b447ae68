"""Billing-cycle boundaries in an office's time zone (spec §2, §4). Pure functions.

Boundaries are 00:00 local time (the first instant of that local date where DST skips
midnight); the anchor day is clamped to short months and returns afterwards."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from offices.timezones import validate_timezone


def zone(name: str) -> ZoneInfo:
    """The office's IANA zone."""
    return ZoneInfo(validate_timezone(name))


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of local date `day` in `tz`, as a UTC datetime."""
    naive = datetime.combine(day, time(0))
    candidate = naive.replace(tzinfo=tz)
    # In a gap (midnight skipped), fold=0 resolves with the offset before the transition,
    # which lands on the first real instant after the gap; check by round trip.
    as_utc = candidate.astimezone(UTC)
    back = as_utc.astimezone(tz)
    if back.date() != day:  # pragma: no cover - defensive; zoneinfo resolves gaps forward
        raise ValueError(f"no instant of {day} in {tz}")
    if back.replace(tzinfo=None) != naive:
        # Midnight did not exist: the first instant of the day is the end of the gap.
        return as_utc
    # Where midnight occurs twice (fold), the earlier instant is the start of the day.
    return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)


def add_months_clamped(anchor: date, months: int) -> date:
    """The anchor's day of month, `months` later, clamped to the month's last day."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(anchor.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class Cycle:
    """One billing period [start, end) in UTC."""

    start: datetime
    end: datetime

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def boundary(anchor: date, k: int, tz: ZoneInfo) -> datetime:
    """Cycle boundary k ≥ 1 of a subscription anchored on `anchor` (00:00 local)."""
    return local_midnight(add_months_clamped(anchor, k), tz)


def next_boundary_after(anchor: date, instant: datetime, tz: ZoneInfo) -> datetime:
    """The first boundary (k ≥ 1) strictly after `instant`."""
    local = instant.astimezone(tz).date()
    # Boundary k-1 of the month before the instant's month is never after it, so the
    # forward walk from there finds the first boundary after the instant in ≤ 3 steps.
    k = max(1, (local.year - anchor.year) * 12 + (local.month - anchor.month) - 1)
    while boundary(anchor, k, tz) <= instant:
        k += 1
    return boundary(anchor, k, tz)


def trial_end(subscribed_at: datetime, trial_days: int, tz: ZoneInfo) -> datetime:
    """00:00 local, `trial_days` days after the local date of subscription (spec §4)."""
    return local_midnight(subscribed_at.astimezone(tz).date() + timedelta(days=trial_days), tz)


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    """The calendar date of `instant` in the office's zone."""
    return instant.astimezone(tz).date()
