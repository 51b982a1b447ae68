"""Compliance reads: is an access review due, what is past retention, who may act here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from compliance.models import AccessReview

RETENTION_YEARS = 6  # 45 CFR 164.316(b)(2)(i)


def may_review(user: Any) -> bool:
    """Operators and compliance auditors may record reviews and take evidence (spec §9:
    the audit trail is theirs to read)."""
    from offices.selectors import is_auditor, is_operator

    return bool(getattr(user, "is_authenticated", False) and (is_operator(user) or is_auditor(user)))


@dataclass(frozen=True)
class AccessReviewStatus:
    interval_days: int
    last: AccessReview | None
    due_at: datetime | None  # None when no review was ever recorded (due now)
    overdue: bool
    days_since: int | None


def access_review_status(*, now: datetime | None = None) -> AccessReviewStatus:
    """When the last information-system activity review was recorded and whether the next
    one is overdue: none ever, or more than ACCESS_REVIEW_INTERVAL_DAYS ago
    (45 CFR 164.308(a)(1)(ii)(D))."""
    now = now or timezone.now()
    interval = int(settings.ACCESS_REVIEW_INTERVAL_DAYS)
    last = AccessReview.objects.order_by("-reviewed_at", "-id").first()
    if last is None:
        return AccessReviewStatus(interval_days=interval, last=None, due_at=None, overdue=True, days_since=None)
    due_at = last.reviewed_at + timedelta(days=interval)
    return AccessReviewStatus(
        interval_days=interval,
        last=last,
        due_at=due_at,
        overdue=now > due_at,
        days_since=(now - last.reviewed_at).days,
    )


def retention_cutoff(now: datetime) -> datetime:
    """Six calendar years before `now` (29 February falls back to the 28th)."""
    try:
        return now.replace(year=now.year - RETENTION_YEARS)
    except ValueError:
        return now.replace(year=now.year - RETENTION_YEARS, day=28)


def past_retention(*, cutoff: datetime) -> dict[str, int]:
    """Rows of required documentation older than the six-year window, per kind. They are
    reported, never deleted by the application (docs/compliance.md, 164.316(b)(2)):
    archiving them is a separately approved operation outside the application's role."""
    from auditlog.models import LogEntry

    from audit.models import AuditAnchor, AuditEvent
    from billing.models import BillingRun, Invoice, LineItem, PlanChange, StripeEvent
    from patients.models import ActivationInterval

    return {
        "audit_events": AuditEvent.objects.filter(ts__lt=cutoff).count(),
        "audit_anchors": AuditAnchor.objects.filter(anchored_at__lt=cutoff).count(),
        "model_change_log_entries": LogEntry.objects.filter(timestamp__lt=cutoff).count(),
        "invoices": Invoice.objects.filter(finalized_at__lt=cutoff).count(),
        "invoice_lines": LineItem.objects.filter(invoice__finalized_at__lt=cutoff).count(),
        "billing_runs": BillingRun.objects.filter(started_at__lt=cutoff).count(),
        "plan_changes": PlanChange.objects.filter(requested_at__lt=cutoff).count(),
        "activation_intervals": ActivationInterval.objects.filter(deactivated_at__lt=cutoff).count(),
        "stripe_events": StripeEvent.objects.filter(received_at__lt=cutoff).count(),
        "access_reviews": AccessReview.objects.filter(reviewed_at__lt=cutoff).count(),
    }
