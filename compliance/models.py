"""Compliance records (HIPAA 45 CFR 164.308(a)(1)(ii)(D)): reviews of the audit trail."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class AccessReview(models.Model):
    """One review of the audit trail over [period_start, period_end), by the logged-in
    reviewer, with findings, follow-ups and the CSV of the period's audit entries as
    reviewed (gzip-compressed; `export_sha256` is the hash of the uncompressed CSV).

    Append-only: a correction is a new review (triggers refuse UPDATE, and DELETE on
    PostgreSQL). Findings and follow-ups are PHI-guarded before they are saved."""

    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reviewer_label = models.CharField(max_length=150)
    reviewed_at = models.DateTimeField(db_index=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    findings = models.TextField()
    follow_ups = models.TextField(blank=True, default="")
    corrects = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="corrections",
        help_text="The earlier review this one corrects, if any.",
    )
    export_rows = models.PositiveIntegerField()
    export_last_event_id = models.BigIntegerField(
        default=0, help_text="The highest audit entry id existing when the export was made."
    )
    export_sha256 = models.CharField(max_length=64)
    export_csv_gz = models.BinaryField()

    class Meta:
        ordering = ["-reviewed_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(period_end__gt=F("period_start")), name="access_review_period_order"),
        ]

    def __str__(self) -> str:
        return f"review #{self.pk} of {self.period_start:%Y-%m-%d}..{self.period_end:%Y-%m-%d} by {self.reviewer_label}"
