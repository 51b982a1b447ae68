"""Dunning: past due, grace period, suspension and recovery (spec §8).

- A `charge_automatically` invoice is due at finalization and becomes past due when a
  payment attempt fails (a Stripe webhook: billing.stripe.events).
- A `send_invoice` invoice is due `days_until_due` days after finalization and becomes
  past due when that moment passes unpaid (`invoices_mark_past_due`, hourly). Its
  `past_due_at` is its `due_at`: the moment it became past due, not the moment we noticed.
- An office's `past_due_since` is the `past_due_at` of its oldest invoice that is still
  open and past due; the grace period runs from it.
- `active` → `past_due` when an invoice is past due; `past_due` for more than
  `BILLING_GRACE_DAYS` → `suspended` (new activations refused, nothing else stops);
  no invoice past due any more → `active`. Offices that are trialing, canceled or not
  subscribed keep their status (their `past_due_since` is still kept right).

Every function that writes takes the office lock first, like every billing write."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Min, Q, Sum
from django.utils import timezone

from audit.services import audit_record
from billing.engine.office import lock_office
from billing.models import Invoice, InvoiceStatus
from offices.models import Office, SubscriptionStatus

logger = logging.getLogger("billing.dunning")


def past_due_invoices(office_id: int) -> Q:
    """Open invoices of the office that are past due (drafts are never due)."""
    return Q(office_id=office_id, status=InvoiceStatus.OPEN, past_due_at__isnull=False)


def grace_period() -> timedelta:
    """How long an office may stay past due before it is suspended (BILLING_GRACE_DAYS, spec §8)."""
    return timedelta(days=settings.BILLING_GRACE_DAYS)


def office_payment_state_refresh(*, office: Office, now: datetime, actor_type: str | None = None) -> Office:
    """Recompute `past_due_since` and move the status between active, past_due and
    suspended from the office's invoices. The caller holds the office lock."""
    agg = Invoice.objects.filter(past_due_invoices(office.pk)).aggregate(
        oldest=Min("past_due_at"), cents=Sum("total_cents")
    )
    oldest: datetime | None = agg["oldest"]
    before = office.subscription_status
    changed: list[str] = []
    if office.past_due_since != oldest:
        office.past_due_since = oldest
        changed.append("past_due_since")

    if oldest is None:
        if office.subscription_status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED):
            office.subscription_status = SubscriptionStatus.ACTIVE
            audit_record(
                action="subscription.reactivated",
                actor_type=actor_type,
                target=office,
                office_id=office.pk,
                data={"from": before, "to": SubscriptionStatus.ACTIVE},
            )
    else:
        figures = {"past_due_since": oldest.isoformat(), "past_due_cents": agg["cents"] or 0}
        beyond_grace = now - oldest > grace_period()
        # Suspended offices that paid their oldest debt and owe only invoices still
        # within grace are past due again (suspension follows the oldest unpaid invoice).
        if office.subscription_status == SubscriptionStatus.ACTIVE or (
            office.subscription_status == SubscriptionStatus.SUSPENDED and not beyond_grace
        ):
            office.subscription_status = SubscriptionStatus.PAST_DUE
            audit_record(
                action="subscription.past_due",
                actor_type=actor_type,
                target=office,
                office_id=office.pk,
                data={"from": before, "to": SubscriptionStatus.PAST_DUE, **figures},
            )
        if office.subscription_status == SubscriptionStatus.PAST_DUE and beyond_grace:
            office.subscription_status = SubscriptionStatus.SUSPENDED
            audit_record(
                action="subscription.suspended",
                actor_type=actor_type,
                target=office,
                office_id=office.pk,
                data={
                    "from": SubscriptionStatus.PAST_DUE,
                    "to": SubscriptionStatus.SUSPENDED,
                    "grace_days": settings.BILLING_GRACE_DAYS,
                    **figures,
                },
            )
    if office.subscription_status != before:
        changed.append("subscription_status")
    if changed:
        office.save(update_fields=[*changed, "updated_at"])
    return office


@dataclass
class DunningStats:
    """What one dunning pass changed."""

    invoices_past_due: int = 0
    offices_checked: int = 0
    offices_past_due: int = 0
    offices_suspended: int = 0
    offices_reactivated: int = 0


@transaction.atomic
def _mark_office_invoices_past_due(*, office_id: int, now: datetime) -> int:
    lock_office(office_id)
    marked = 0
    invoices = Invoice.objects.select_for_update().filter(
        office_id=office_id,
        status=InvoiceStatus.OPEN,
        past_due_at__isnull=True,
        due_at__lt=now,
        due_at__gt=F("finalized_at"),  # issued with payment terms (send_invoice)
    )
    for invoice in invoices:
        invoice.past_due_at = invoice.due_at
        invoice.save(update_fields=["past_due_at", "updated_at"])
        assert invoice.due_at is not None
        audit_record(
            action="invoice.past_due",
            target=invoice,
            office_id=office_id,
            data={
                "number": invoice.number,
                "total_cents": invoice.total_cents,
                "due_at": invoice.due_at.isoformat(),
                "reason": "unpaid_after_due_date",
            },
        )
        marked += 1
    return marked


def invoices_mark_past_due(*, now: datetime) -> int:
    """`send_invoice` invoices whose due date has passed unpaid become past due."""
    office_ids = (
        Invoice.objects.filter(
            status=InvoiceStatus.OPEN, past_due_at__isnull=True, due_at__lt=now, due_at__gt=F("finalized_at")
        )
        .values_list("office_id", flat=True)
        .distinct()
    )
    return sum(_mark_office_invoices_past_due(office_id=office_id, now=now) for office_id in sorted(set(office_ids)))


@transaction.atomic
def _refresh_office(*, office_id: int, now: datetime, stats: DunningStats) -> None:
    office = lock_office(office_id)
    before = office.subscription_status
    office_payment_state_refresh(office=office, now=now)
    stats.offices_checked += 1
    after = office.subscription_status
    if after == before:
        return
    if after == SubscriptionStatus.ACTIVE:
        stats.offices_reactivated += 1
    elif after == SubscriptionStatus.SUSPENDED:
        stats.offices_suspended += 1
    if after != SubscriptionStatus.ACTIVE and before == SubscriptionStatus.ACTIVE:
        stats.offices_past_due += 1


def dunning_run(*, now: datetime | None = None) -> DunningStats:
    """The hourly dunning pass: mark overdue `send_invoice` invoices past due, then bring
    every office that is past due, suspended or has a past-due invoice up to date. One
    transaction per office; safe to run twice or concurrently."""
    now = now or timezone.now()
    stats = DunningStats()
    stats.invoices_past_due = invoices_mark_past_due(now=now)
    with_past_due = Invoice.objects.filter(status=InvoiceStatus.OPEN, past_due_at__isnull=False).values_list(
        "office_id", flat=True
    )
    in_dunning = Office.objects.filter(
        Q(subscription_status__in=(SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED))
        | Q(past_due_since__isnull=False)
    ).values_list("pk", flat=True)
    for office_id in sorted(set(with_past_due) | set(in_dunning)):
        _refresh_office(office_id=office_id, now=now, stats=stats)
    if stats.invoices_past_due or stats.offices_past_due or stats.offices_suspended or stats.offices_reactivated:
        logger.info("dunning: %s", stats)
    return stats
