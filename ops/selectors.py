"""Operations reads: the dead-man switches (is beat ticking, is the audit sealer sealing?).

Both read the database only; /health/ready, the console's overview and /metrics share
them, so the three always agree. Times are UTC; `message` is in people's terms and says
nothing but task names, ages and thresholds (no PHI, nothing secret)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone

from audit.models import AuditEvent
from billing.dates import local_minute
from ops.models import Heartbeat
from ops.services import BILLING_TICK


def _ago(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days {hours % 24} h"


def _limit(minutes: int) -> str:
    return _ago(timedelta(minutes=minutes))


@dataclass(frozen=True)
class TickStatus:
    """The hourly billing run's tick: when it last succeeded and whether that is recent enough."""

    ok: bool
    last_success_at: datetime | None
    age_seconds: float | None
    threshold_seconds: int
    message: str


@dataclass(frozen=True)
class SealingStatus:
    """The audit sealer: how many committed entries wait for their place in the chain, and how long the oldest has."""

    ok: bool
    unsealed: int
    oldest_unsealed_at: datetime | None
    oldest_age_seconds: float | None
    threshold_seconds: int
    message: str


@dataclass(frozen=True)
class DeadmanAlert:
    check: str  # "billing_tick" or "audit_sealer"
    title: str
    message: str


def billing_tick_status(*, now: datetime | None = None) -> TickStatus:
    """Red when the last successful billing-run tick is older than HEALTH_TICK_MAX_AGE_MINUTES
    or there has been none (beat stopped, or every tick failed; spec §6 runs hourly)."""
    now = now or timezone.now()
    limit_minutes = settings.HEALTH_TICK_MAX_AGE_MINUTES
    threshold = timedelta(minutes=limit_minutes)
    beat = Heartbeat.objects.filter(name=BILLING_TICK).first()
    if beat is None:
        return TickStatus(
            ok=False,
            last_success_at=None,
            age_seconds=None,
            threshold_seconds=int(threshold.total_seconds()),
            message=(
                "No successful billing-run tick recorded yet. Beat runs it hourly; if it stays so for "
                f"more than {_limit(limit_minutes)} after the start, beat or the worker is not running."
            ),
        )
    age = now - beat.last_success_at
    ok = age <= threshold
    when = local_minute(beat.last_success_at, settings.BILLING_DEFAULT_TIMEZONE)
    every = _limit(limit_minutes)
    message = f"The billing-run tick last succeeded {_ago(age)} ago ({when}); expected at least every {every}."
    if not ok:
        message = (
            f"The hourly billing run has not ticked successfully for {_ago(age)} (last at {when}; "
            f"alert after {_limit(limit_minutes)}): beat or the worker has stopped, or every tick fails."
        )
    return TickStatus(
        ok=ok,
        last_success_at=beat.last_success_at,
        age_seconds=max(0.0, age.total_seconds()),
        threshold_seconds=int(threshold.total_seconds()),
        message=message,
    )


def audit_sealing_status(*, now: datetime | None = None) -> SealingStatus:
    """Red when a committed audit entry has waited for its seal longer than
    HEALTH_AUDIT_UNSEALED_MAX_AGE_MINUTES (the sealer runs after each commit and every
    minute, spec §9). One query on the sealer's own partial index."""
    now = now or timezone.now()
    limit_minutes = settings.HEALTH_AUDIT_UNSEALED_MAX_AGE_MINUTES
    threshold = timedelta(minutes=limit_minutes)
    agg = AuditEvent.objects.filter(seq__isnull=True).aggregate(n=Count("id"), oldest=Min("ts"))
    count: int = agg["n"] or 0
    oldest: datetime | None = agg["oldest"]
    age = (now - oldest) if oldest is not None else None
    ok = age is None or age <= threshold
    if oldest is None:
        message = "Every audit entry is sealed."
    elif ok:
        message = f"{count} audit entries wait for their seal; the oldest for {_ago(age or timedelta())}."
    else:
        when = local_minute(oldest, settings.BILLING_DEFAULT_TIMEZONE)
        message = (
            f"{count} audit entries are not sealed into the chain; the oldest has waited {_ago(age or timedelta())} "
            f"(since {when}; alert after {_limit(limit_minutes)}): the audit sealer has stopped or fails."
        )
    return SealingStatus(
        ok=ok,
        unsealed=count,
        oldest_unsealed_at=oldest,
        oldest_age_seconds=max(0.0, age.total_seconds()) if age is not None else None,
        threshold_seconds=int(threshold.total_seconds()),
        message=message,
    )


def deadman_alerts(*, now: datetime | None = None) -> list[DeadmanAlert]:
    """What has stopped: the billing-run tick (beat) and the audit sealer, each when past its threshold."""
    now = now or timezone.now()
    alerts: list[DeadmanAlert] = []
    tick = billing_tick_status(now=now)
    if not tick.ok:
        alerts.append(DeadmanAlert("billing_tick", "Billing run: beat is not ticking", tick.message))
    sealing = audit_sealing_status(now=now)
    if not sealing.ok:
        alerts.append(DeadmanAlert("audit_sealer", "Audit trail: entries are not being sealed", sealing.message))
    return alerts
