"""Companies and offices. The office is the billing customer (spec §1, §8)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from offices.timezones import default_timezone


class Company(models.Model):
    """A practice group. Carries no billing or payment configuration of any kind."""

    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "companies"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SubscriptionStatus(models.TextChoices):
    NONE = "none"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    SUSPENDED = "suspended"
    CANCELED = "canceled"


class CollectionMethod(models.TextChoices):
    CHARGE_AUTOMATICALLY = "charge_automatically"
    SEND_INVOICE = "send_invoice"


class Role(models.TextChoices):
    """Per-office roles, held as django-guardian object permissions on the office."""

    OFFICE_BILLING_ADMIN = "office_billing_admin"
    OFFICE_STAFF = "office_staff"


COMPLIANCE_AUDITOR_GROUP = "compliance_auditor"


class Office(models.Model):
    """The billing customer. Subscription state lives here; writes go through services."""

    company = models.ForeignKey(Company, null=True, blank=True, on_delete=models.PROTECT, related_name="offices")
    name = models.CharField(max_length=200, db_index=True)
    billing_email = models.EmailField()
    timezone = models.CharField(max_length=64, default=default_timezone)

    subscription_status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.NONE, db_index=True
    )
    current_plan = models.ForeignKey("billing.Plan", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    pending_plan = models.ForeignKey("billing.Plan", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    billing_cycle_anchor_date = models.DateField(null=True, blank=True)
    subscribed_at = models.DateTimeField(null=True, blank=True)
    trial_ends_at = models.DateTimeField(null=True, blank=True, db_index=True)
    trial_used = models.BooleanField(default=False)
    # When the first cycle that ever opened for the office opened (spec §7: the setup fee
    # goes with it). Kept even if a same-instant cancel discards that cycle's draft.
    first_cycle_opened_at = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    past_due_since = models.DateTimeField(null=True, blank=True)

    payment_provider_customer_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    # Set when the name or billing email changes; cleared once Stripe's customer carries
    # them (billing/stripe/push.customer_sync). The hourly sweep re-enqueues what is still set.
    customer_identity_changed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    payment_provider_subscription_id = models.CharField(max_length=255, null=True, blank=True)
    collection_method = models.CharField(
        max_length=32, choices=CollectionMethod.choices, default=CollectionMethod.CHARGE_AUTOMATICALLY
    )
    days_until_due = models.PositiveIntegerField(default=30)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        permissions = [
            (Role.OFFICE_BILLING_ADMIN, "Office billing admin: invoices, payment status, subscription"),
            (Role.OFFICE_STAFF, "Office staff: create, activate and deactivate patients"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(days_until_due__gte=1), name="office_days_until_due_positive"),
            models.CheckConstraint(
                condition=~Q(subscription_status="trialing") | Q(trial_ends_at__isnull=False),
                name="office_trialing_has_trial_end",
            ),
        ]

    def __str__(self) -> str:
        return self.name
