"""Emails to an office's billing contact (spec §12, emails): one row per business event.

`OutboundEmail.idempotency_key` is unique and names the business event, never the audit
entry that told us about it (`invoice_issued:<invoice id>`), so an event audited twice is
still mailed once. A row moves pending → sending (claimed by a conditional UPDATE) → sent,
or → failed with a reason. A row left in `sending` (the process died between handing the
message to the SMTP server and recording it) is never sent again automatically: operators
see it in the console (docs/console.md)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class EmailKind(models.TextChoices):
    INVOICE_ISSUED = "invoice_issued", "Invoice issued"
    PAYMENT_FAILED = "payment_failed", "Payment failed"
    SUSPENSION_WARNING = "suspension_warning", "Suspension warning"
    SUSPENDED = "suspended", "Billing suspended"
    REACTIVATED = "reactivated", "Billing active again"
    CREDIT_NOTE_ISSUED = "credit_note_issued", "Credit note issued"


class EmailStatus(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class Attachment(models.TextChoices):
    NONE = "", "none"
    INVOICE_PDF = "invoice_pdf", "invoice PDF"


class OutboundEmail(models.Model):
    """One email, rendered when the event is seen, sent at most once."""

    idempotency_key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=32, choices=EmailKind.choices, db_index=True)
    office = models.ForeignKey("offices.Office", on_delete=models.PROTECT, related_name="+")
    invoice = models.ForeignKey("billing.Invoice", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    recipient = models.EmailField()
    subject = models.CharField(max_length=255)
    body_text = models.TextField()
    body_html = models.TextField()
    attachment = models.CharField(max_length=32, choices=Attachment.choices, blank=True, default="")
    # The values we composed the text from (amounts, dates, numbers, names of our own), for
    # the PHI guard at send time: text made only of them is never refused.
    trusted = models.JSONField(default=list, blank=True)

    status = models.CharField(max_length=16, choices=EmailStatus.choices, default=EmailStatus.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    # Set once a row stuck in `sending` has been reported (logged and audited) to operators.
    stuck_reported_at = models.DateTimeField(null=True, blank=True)
    # The audit entry (its chain position) the row was derived from; none for sweeps and hooks.
    source_seq = models.BigIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "email"
        constraints = [
            models.CheckConstraint(condition=~Q(status="sent") | Q(sent_at__isnull=False), name="email_sent_has_time"),
            models.CheckConstraint(
                condition=~Q(status="sending") | Q(claimed_at__isnull=False), name="email_sending_is_claimed"
            ),
            models.CheckConstraint(condition=~Q(status="failed") | ~Q(last_error=""), name="email_failed_has_reason"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to office {self.office_id} ({self.status})"


class DispatchCursor(models.Model):
    """A single row: the last audit entry (chain position `seq`) the dispatcher has read.
    Locking it serializes dispatchers."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "email dispatch cursor"

    def __str__(self) -> str:
        return f"emails read up to audit seq {self.last_seq}"
