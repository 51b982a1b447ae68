"""Reads of the emails (spec §12, emails)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from billing.dates import local_minute
from notifications.models import EmailStatus, OutboundEmail


def emails_for_console() -> QuerySet[OutboundEmail]:
    """Every email with its office, newest first (the console's list)."""
    return OutboundEmail.objects.select_related("office", "invoice").order_by("-id")


def emails_stuck() -> QuerySet[OutboundEmail]:
    """Emails left in `sending` (may or may not have been delivered): for an operator to check."""
    return OutboundEmail.objects.filter(status=EmailStatus.SENDING, stuck_reported_at__isnull=False)


def local_time(email: OutboundEmail, instant: datetime | None) -> str:
    """An instant of this email in its office's zone, to the minute with the offset."""
    return local_minute(instant, email.office.timezone) if instant else "—"
