"""How people read instants: in the office's zone (spec §2: boundaries are the office's
local midnights). The database keeps UTC; every date a person or Stripe's hosted invoice
shows goes through here."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from django.utils import timezone


def local_day(instant: datetime, tz_name: str) -> str:
    """The calendar date of `instant` in the zone, ISO 8601: "2026-04-10"."""
    return instant.astimezone(ZoneInfo(tz_name)).date().isoformat()


def local_today(tz_name: str) -> date:
    """Today's calendar date in the zone (what "today" means to the office's people)."""
    return timezone.now().astimezone(ZoneInfo(tz_name)).date()


def local_minute(instant: datetime, tz_name: str) -> str:
    """The local time to the minute with its UTC offset, ISO 8601: "2026-03-10 14:00-05:00"."""
    local = instant.astimezone(ZoneInfo(tz_name))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M}{offset[:3]}:{offset[3:]}"


def local_period(start: datetime, end: datetime, tz_name: str) -> str:
    """A half-open billing period as its local dates: "2026-03-10 to 2026-04-10"."""
    return f"{local_day(start, tz_name)} to {local_day(end, tz_name)}"
