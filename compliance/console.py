"""The access-review block of the console's overview (templates/admin/index.html)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from billing.dates import local_minute
from compliance.selectors import access_review_status


def access_review_overview(zone: str) -> dict[str, Any]:
    """When the last activity review was recorded and whether one is overdue (45 CFR
    164.308(a)(1)(ii)(D), every ACCESS_REVIEW_INTERVAL_DAYS), laid out for the overview."""
    status = access_review_status()
    last = status.last
    return {
        "overdue": status.overdue,
        "interval_days": status.interval_days,
        "last_at": local_minute(last.reviewed_at, zone) if last else "",
        "last_by": last.reviewer_label if last else "",
        "last_period": f"{local_minute(last.period_start, zone)} – {local_minute(last.period_end, zone)}"
        if last
        else "",
        "due_at": local_minute(status.due_at, zone) if status.due_at else "",
        "add_url": reverse("admin:compliance_accessreview_add"),
        "list_url": reverse("admin:compliance_accessreview_changelist"),
        "evidence_url": reverse("admin:compliance_evidence_export"),
    }
