"""Plans, plan changes, invoices, lines, invoice numbers and billing runs (spec §3–§7)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from offices.models import Office
from patients.models import Patient

FROZEN_PLAN_FIELDS = ("code", "currency", "per_patient_cents", "minimum_cents", "setup_fee_cents", "trial_days")


class Plan(models.Model):
    """A price list. Once an office subscribes, prices, currency and trial are frozen
    (`locked`; a trigger refuses changes): a new price is a new plan."""

    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, default="usd")
    per_patient_cents = models.BigIntegerField()
    minimum_cents = models.BigIntegerField(default=0)
    setup_fee_cents = models.BigIntegerField(default=0)
    trial_days = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    locked = models.BooleanField(default=False, help_text="Set at the first subscription; prices are frozen.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(condition=Q(per_patient_cents__gte=0), name="plan_per_patient_nonneg"),
            models.CheckConstraint(condition=Q(minimum_cents__gte=0), name="plan_minimum_nonneg"),
            models.CheckConstraint(condition=Q(setup_fee_cents__gte=0), name="plan_setup_fee_nonneg"),
            models.CheckConstraint(condition=Q(currency__regex=r"^[a-z]{3}$"), name="plan_currency_iso_lower"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class PlanChangeKind(models.TextChoices):
    SUBSCRIBE = "subscribe"
    CHANGE = "change"


class PlanChange(models.Model):
    """Append-only record of which plan an office asked for, and when (spec §5, §8).

    The plan in force for cycle C: the latest `subscribe` at or before C.start, replaced by
    the latest `change` requested strictly before C.start."""

    office = models.ForeignKey(Office, on_delete=models.PROTECT, related_name="plan_changes")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=PlanChangeKind.choices)
    requested_at = models.DateTimeField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["requested_at", "id"]
        indexes = [models.Index(fields=["office", "requested_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.plan_id} at {self.requested_at:%Y-%m-%d %H:%M}"


class InvoiceKind(models.TextChoices):
    CYCLE = "cycle"
    ONE_OFF = "one_off"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class PushState(models.TextChoices):
    """Where the Stripe push stands. `pending` is the seam the Stripe gateway picks up."""

    NOT_REQUIRED = "not_required"
    PENDING = "pending"
    PUSHED = "pushed"
    FAILED = "failed"


# Columns a trigger freezes once an invoice leaves `draft` (spec §6).
FROZEN_INVOICE_FIELDS = (
    "office_id",
    "kind",
    "number",
    "currency",
    "subtotal_cents",
    "total_cents",
    "period_start",
    "period_end",
    "is_setup_fee",
    "plan_id",
    "finalized_at",
)


class Invoice(models.Model):
    office = models.ForeignKey(Office, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=16, choices=InvoiceKind.choices)
    status = models.CharField(max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    number = models.CharField(max_length=40, null=True, blank=True, unique=True)
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    is_setup_fee = models.BooleanField(default=False)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    currency = models.CharField(max_length=3, default="usd")
    subtotal_cents = models.BigIntegerField(default=0)
    total_cents = models.BigIntegerField(default=0)

    finalized_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    marked_uncollectible_at = models.DateTimeField(null=True, blank=True)
    past_due_at = models.DateTimeField(null=True, blank=True)
    payment_note = models.CharField(max_length=200, blank=True, default="")

    stripe_invoice_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    push_state = models.CharField(max_length=16, choices=PushState.choices, default=PushState.NOT_REQUIRED)
    push_attempts = models.PositiveIntegerField(default=0)
    push_error = models.CharField(max_length=500, blank=True, default="")
    # A push or a void sync in flight holds this claim (a conditional UPDATE) until it ends
    # or the time passes: the two never run at once for one invoice (spec §8).
    push_claimed_until = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["office", "period_start"], condition=Q(kind="cycle"), name="invoice_one_cycle_per_period"
            ),
            models.UniqueConstraint(
                fields=["office"], condition=Q(kind="cycle", status="draft"), name="invoice_one_open_draft_cycle"
            ),
            models.UniqueConstraint(fields=["office"], condition=Q(is_setup_fee=True), name="invoice_one_setup_fee"),
            models.CheckConstraint(condition=Q(subtotal_cents__gte=0), name="invoice_subtotal_nonneg"),
            models.CheckConstraint(condition=Q(total_cents__gte=0), name="invoice_total_nonneg"),
            models.CheckConstraint(
                condition=~Q(kind="cycle") | Q(period_start__isnull=False, period_end__gt=F("period_start")),
                name="invoice_cycle_period_valid",
            ),
            models.CheckConstraint(
                condition=Q(period_end__isnull=True) | Q(period_end__gt=F("period_start")),
                name="invoice_period_ends_after_start",
            ),
            models.CheckConstraint(
                condition=(Q(status="draft") & Q(number__isnull=True) & Q(finalized_at__isnull=True))
                | (~Q(status="draft") & Q(number__isnull=False) & Q(finalized_at__isnull=False)),
                name="invoice_numbered_iff_finalized",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "period_end"]),
            models.Index(fields=["office", "status"]),
            models.Index(fields=["push_state"]),
        ]

    def __str__(self) -> str:
        return self.number or f"draft #{self.pk}"

    @property
    def is_finalized(self) -> bool:
        return self.status != InvoiceStatus.DRAFT


class LineKind(models.TextChoices):
    RECURRING = "recurring"
    ACTIVATION = "activation"
    MINIMUM_ADJUSTMENT = "minimum_adjustment"
    SETUP_FEE = "setup_fee"
    MANUAL = "manual"


PATIENT_LINE_KINDS = (LineKind.RECURRING, LineKind.ACTIVATION)


class LineItem(models.Model):
    """One line. Patient lines identify the patient by billing reference only."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    kind = models.CharField(max_length=24, choices=LineKind.choices)
    patient = models.ForeignKey(Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    patient_ref = models.CharField(max_length=16, blank=True, default="")
    description = models.CharField(max_length=500)
    quantity = models.PositiveIntegerField(default=1)
    unit_amount_cents = models.BigIntegerField()
    amount_cents = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "patient"],
                condition=Q(patient__isnull=False),
                name="line_one_per_patient_per_invoice",
            ),
            models.CheckConstraint(condition=Q(quantity__gte=1), name="line_quantity_positive"),
            models.CheckConstraint(condition=Q(unit_amount_cents__gte=0), name="line_unit_amount_nonneg"),
            models.CheckConstraint(
                condition=Q(amount_cents=F("quantity") * F("unit_amount_cents")), name="line_amount_is_qty_times_unit"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["recurring", "activation"], patient__isnull=False)
                | (~Q(kind__in=["recurring", "activation"]) & Q(patient__isnull=True)),
                name="line_patient_iff_patient_kind",
            ),
        ]

    def __str__(self) -> str:
        return self.description


class InvoiceNumberSequence(models.Model):
    """Gapless numbering per UTC year: the row is locked and bumped in the finalizing
    transaction, so a rollback gives the number back."""

    year = models.PositiveIntegerField(primary_key=True)
    last_value = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last_value}"


class BillingRunStatus(models.TextChoices):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class BillingRun(models.Model):
    """One billing run: what it was asked to do and what it did."""

    as_of = models.DateTimeField()
    trigger = models.CharField(max_length=32, default="command")
    office_filter = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=BillingRunStatus.choices, default=BillingRunStatus.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    chunks_total = models.PositiveIntegerField(default=1)
    chunks_done = models.PositiveIntegerField(default=0)
    offices_due = models.PositiveIntegerField(default=0)
    offices_done = models.PositiveIntegerField(default=0)
    invoices_finalized = models.PositiveIntegerField(default=0)
    invoices_opened = models.PositiveIntegerField(default=0)
    lines_created = models.PositiveIntegerField(default=0)
    amount_finalized_cents = models.BigIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"run #{self.pk} as of {self.as_of:%Y-%m-%d %H:%M}Z ({self.status})"


class BillingRunChunk(models.Model):
    """One chunk of a run's offices, as handed to one Celery task. `done_at` is set once,
    by a conditional update: a chunk delivered twice counts once, and the run closes only
    when no chunk is left undone (spec §6)."""

    run = models.ForeignKey(BillingRun, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    office_ids = models.JSONField()
    deliveries = models.PositiveIntegerField(default=0)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="billing_run_chunk_once")]

    def __str__(self) -> str:
        return f"run {self.run_id} chunk {self.seq}"


class BillingRunError(models.Model):
    """An office the run could not bill (its transaction rolled back; the next run retries)."""

    run = models.ForeignKey(BillingRun, on_delete=models.CASCADE, related_name="errors")
    office = models.ForeignKey(Office, on_delete=models.PROTECT, related_name="+")
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"run {self.run_id} office {self.office_id}"


class WebhookRejectionWindow(models.Model):
    """Rejected webhook deliveries of one source and reason within one minute: the first
    is audited, the rest are counted here, and the count is audited once the minute is over
    (`webhook.rejections_summarized`), so a flood of forgeries cannot flood the trail."""

    source_ip = models.CharField(max_length=45, blank=True, default="")
    reason = models.CharField(max_length=100)
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=1)
    last_at = models.DateTimeField()
    summarized_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-window_start", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["source_ip", "reason", "window_start"], name="webhook_rejection_window_once"
            )
        ]
        indexes = [models.Index(fields=["summarized_at", "window_start"])]

    def __str__(self) -> str:
        return f"{self.count} × {self.reason} from {self.source_ip or '?'} at {self.window_start:%Y-%m-%d %H:%M}Z"


class StripeEventStatus(models.TextChoices):
    RECEIVED = "received"  # recorded and claimed by the worker reacting to it
    PROCESSED = "processed"
    FAILED = "failed"  # a redelivery retries it


class StripeEvent(models.Model):
    """A verified Stripe webhook event, recorded once by its id (spec §8).

    The unique `event_id` decides which of several concurrent deliveries reacts; the
    others see the row. No body is kept: reactions re-read the current object from
    Stripe, and dj-stripe keeps its own mirror. No secret or signature is stored."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    livemode = models.BooleanField(default=False)
    api_version = models.CharField(max_length=64, blank=True, default="")
    object_type = models.CharField(max_length=64, blank=True, default="")
    object_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    stripe_created = models.DateTimeField(help_text="When Stripe created the event.")
    office = models.ForeignKey(Office, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=StripeEventStatus.choices, default=StripeEventStatus.RECEIVED)
    attempts = models.PositiveIntegerField(default=1)
    deliveries = models.PositiveIntegerField(default=1)
    outcome = models.CharField(max_length=200, blank=True, default="")
    error = models.CharField(max_length=500, blank=True, default="")
    mirrored = models.BooleanField(default=False, help_text="Handed to dj-stripe's mirror without error.")
    mirror_error = models.CharField(max_length=500, blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-stripe_created", "-id"]
        indexes = [models.Index(fields=["status", "claimed_at"])]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id} ({self.status})"
