"""Billing use-cases: plans, subscriptions, patient activation, one-off invoices, voids.

Every service that changes an office's billing takes the office lock first, catches the
office up to "now" (so that a missed run never leaves a change in the wrong cycle), and
records an audit entry. Stripe is never called from here: finalization asks for a push
after commit (billing.seam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from billing.engine.advance import advance_all, open_cycle
from billing.engine.cycles import local_date, trial_end, zone
from billing.engine.finalize import finalize_cycle, finalize_invoice
from billing.engine.labels import patient_line_label
from billing.engine.office import ONE_MICROSECOND, AdvanceStats, current_draft, is_active_at, lock_office
from billing.models import (
    FROZEN_PLAN_FIELDS,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
    PlanChange,
    PlanChangeKind,
    PushState,
)
from billing.phi_guard import audited_refusals, phi_check
from billing.seam import request_customer_ensure, request_void_sync
from billing.selectors import office_currency
from config.errors import ApplicationError, ConflictError, NotFoundError
from offices.models import Office, SubscriptionStatus
from patients.models import ActivationInterval, Patient

# --- Plans -----------------------------------------------------------------------------


def _validate_plan_fields(fields: dict[str, Any]) -> None:
    for name in ("per_patient_cents", "minimum_cents", "setup_fee_cents", "trial_days"):
        if name in fields:
            value = fields[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApplicationError(f"'{name}' must be a whole number (integer cents or days).", {"field": name})
            if value < 0:
                raise ApplicationError(f"'{name}' may not be negative (got {value}).", {"field": name})
    if "currency" in fields:
        cur = fields["currency"]
        if not isinstance(cur, str) or len(cur) != 3 or not cur.isalpha():
            raise ApplicationError("'currency' must be a three-letter ISO 4217 code such as 'usd'.")
        fields["currency"] = cur.lower()


@transaction.atomic
def plan_create(
    *,
    code: str,
    name: str,
    per_patient_cents: int,
    currency: str | None = None,
    minimum_cents: int = 0,
    setup_fee_cents: int = 0,
    trial_days: int = 0,
    is_active: bool = True,
    actor: Any = None,
) -> Plan:
    """Create a plan with validated prices in cents (spec §3); audited."""
    fields: dict[str, Any] = {
        "currency": currency or settings.BILLING_DEFAULT_CURRENCY,
        "per_patient_cents": per_patient_cents,
        "minimum_cents": minimum_cents,
        "setup_fee_cents": setup_fee_cents,
        "trial_days": trial_days,
    }
    _validate_plan_fields(fields)
    if not code or Plan.objects.filter(code=code).exists():
        raise ApplicationError(f"A plan with code '{code}' already exists." if code else "'code' is required.")
    plan = Plan.objects.create(code=code, name=name or code, is_active=is_active, **fields)
    audit_record(action="plan.created", actor=actor, target=plan, data={"code": code, **fields})
    return plan


@transaction.atomic
def plan_update(*, plan: Plan, actor: Any = None, **changes: Any) -> Plan:
    """Only name and is_active may change once an office has subscribed (spec §3)."""
    plan = Plan.objects.select_for_update().get(pk=plan.pk)
    frozen = sorted(k for k, v in changes.items() if k in FROZEN_PLAN_FIELDS and getattr(plan, k) != v)
    if plan.locked and frozen:
        raise ConflictError(
            f"Plan '{plan.code}' is in use: its {', '.join(frozen)} are frozen. Create a new plan for a new price.",
            {"fields": frozen},
        )
    _validate_plan_fields(changes)
    before = {k: getattr(plan, k) for k in changes}
    for key, value in changes.items():
        setattr(plan, key, value)
    plan.save()
    audit_record(action="plan.updated", actor=actor, target=plan, data={"before": before, "after": changes})
    return plan


def _active_plan(code: str) -> Plan:
    plan = Plan.objects.filter(code=code).first()
    if plan is None:
        raise ApplicationError(f"Unknown plan '{code}'.", {"field": "plan"})
    if not plan.is_active:
        raise ApplicationError(f"Plan '{code}' is not offered any more.", {"field": "plan"})
    return plan


def _freeze_plan(plan: Plan) -> None:
    Plan.objects.filter(pk=plan.pk, locked=False).update(locked=True)


# --- Subscription ----------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionView:
    """An office's subscription as the API shows it (spec §10)."""

    status: str
    plan: str | None
    pending_plan: str | None
    billing_cycle_anchor_date: Any
    trial_ends_at: Any
    cancel_at_period_end: bool
    current_period_start: Any
    current_period_end: Any


@transaction.atomic
def subscription_create(*, office: Office, plan_code: str, actor: Any = None) -> Office:
    """Subscribe (spec §4, §7, §8), after catching the office up: with a trial (on the
    office's first subscription only) → `trialing` until 00:00 local `trial_days` later;
    without → `active`, anchored on today's local date, the first cycle opening now (and
    the setup fee with it if no cycle ever opened for the office)."""
    office = lock_office(office.pk)
    now = timezone.now()
    advance_all(office=office, as_of=now)  # a passed cancellation no run has processed yet
    plan = _active_plan(plan_code)
    if office.subscription_status not in (SubscriptionStatus.NONE, SubscriptionStatus.CANCELED):
        raise ConflictError(f"Office '{office.name}' already has a subscription ({office.subscription_status}).")
    tz = zone(office.timezone)
    first_subscription = office.subscribed_at is None
    _freeze_plan(plan)
    PlanChange.objects.create(
        office=office, plan=plan, kind=PlanChangeKind.SUBSCRIBE, requested_at=now, requested_by=_user(actor)
    )
    office.current_plan = plan
    office.pending_plan = None
    office.subscribed_at = now
    office.cancel_at_period_end = False
    office.canceled_at = None
    # A trial once per office, and only on its first subscription (spec §7).
    trial = plan.trial_days > 0 and first_subscription and not office.trial_used
    if trial:
        office.trial_ends_at = trial_end(now, plan.trial_days, tz)
        office.billing_cycle_anchor_date = local_date(office.trial_ends_at, tz)
        office.subscription_status = SubscriptionStatus.TRIALING
        office.trial_used = True
    else:
        office.trial_ends_at = None
        office.billing_cycle_anchor_date = local_date(now, tz)
        office.subscription_status = SubscriptionStatus.ACTIVE
    office.save()
    audit_record(
        action="subscription.created",
        actor=actor,
        target=office,
        office_id=office.pk,
        data={
            "plan": plan.code,
            "status": office.subscription_status,
            "trial_ends_at": office.trial_ends_at.isoformat() if office.trial_ends_at else None,
            "anchor": office.billing_cycle_anchor_date.isoformat(),
        },
    )
    request_customer_ensure(office.pk)  # after commit: the Stripe customer exists from now on
    if not trial:
        open_cycle(office=office, start=now, stats=AdvanceStats())
    return office


def _require_subscribed(office: Office, action: str) -> None:
    if office.subscription_status == SubscriptionStatus.NONE:
        raise ConflictError(f"Cannot {action}: office '{office.name}' has no subscription.")
    if office.subscription_status == SubscriptionStatus.CANCELED:
        raise ConflictError(f"Cannot {action}: office '{office.name}' has a canceled subscription.")


@transaction.atomic
def subscription_change_plan(*, office: Office, plan_code: str, actor: Any = None) -> Office:
    """Takes effect at the next cycle start; the request time prices each cycle (spec §8)."""
    office = lock_office(office.pk)
    now = timezone.now()
    advance_all(office=office, as_of=now)
    _require_subscribed(office, "change the plan")
    plan = _active_plan(plan_code)
    current = office.current_plan
    assert current is not None
    if plan.currency != current.currency:
        raise ApplicationError(
            f"Plan '{plan.code}' bills in {plan.currency.upper()}, the subscription in {current.currency.upper()}: "
            "a plan change must keep the currency.",
            {"field": "plan"},
        )
    effective_next = office.pending_plan or current
    if plan.pk == effective_next.pk:
        raise ConflictError(f"Office '{office.name}' is already on plan '{plan.code}' from the next cycle.")
    _freeze_plan(plan)
    PlanChange.objects.create(
        office=office, plan=plan, kind=PlanChangeKind.CHANGE, requested_at=now, requested_by=_user(actor)
    )
    office.pending_plan = None if plan.pk == current.pk else plan
    office.save(update_fields=["pending_plan", "updated_at"])
    audit_record(
        action="subscription.plan_changed",
        actor=actor,
        target=office,
        office_id=office.pk,
        data={"from": effective_next.code, "to": plan.code, "requested_at": now.isoformat()},
    )
    return office


def subscription_cancel(*, office: Office, actor: Any = None, immediately: bool = False, reason: str = "") -> Office:
    """Cancel at period end (default), or now (operators): missed cycles are finalized
    first, then the current cycle is cut at the cancel instant with no minimum (spec §8).
    During a trial the subscription ends at once and costs nothing (spec §4). An operator's
    reason is free text: it passes the PHI guard and is kept in the audit entry."""
    with audited_refusals(office_id=office.pk, actor=actor, context="subscription_cancel"):
        return _subscription_cancel(office=office, actor=actor, immediately=immediately, reason=reason.strip())


@transaction.atomic
def _subscription_cancel(*, office: Office, actor: Any, immediately: bool, reason: str) -> Office:
    if reason:
        phi_check(office=office, fields={"reason": reason})
    office = lock_office(office.pk)
    now = timezone.now()
    advance_all(office=office, as_of=now)
    _require_subscribed(office, "cancel")
    mode = "immediately" if immediately else "period_end"
    if office.subscription_status == SubscriptionStatus.TRIALING or immediately:
        if office.subscription_status == SubscriptionStatus.TRIALING:
            mode = "trial"
        draft = current_draft(office)
        if draft is not None:
            assert draft.period_start is not None
            if now > draft.period_start:
                draft.period_end = now
                draft.save(update_fields=["period_end", "updated_at"])
                finalize_cycle(invoice=draft, office=office, stats=AdvanceStats(), apply_minimum=False)
            else:  # the cycle opened at this very instant: nothing to bill
                LineItem.objects.filter(invoice=draft).delete()
                draft.delete()
        office.subscription_status = SubscriptionStatus.CANCELED
        office.canceled_at = now
        office.cancel_at_period_end = False
        office.pending_plan = None
    else:
        if office.cancel_at_period_end:
            raise ConflictError(f"Office '{office.name}' is already set to cancel at the end of the period.")
        office.cancel_at_period_end = True
    office.save()
    audit_record(
        action="subscription.canceled"
        if office.subscription_status == SubscriptionStatus.CANCELED
        else "subscription.cancel_scheduled",
        actor=actor,
        target=office,
        office_id=office.pk,
        reason=reason[:200],
        data={"mode": mode, "at": now.isoformat()},
    )
    return office


@transaction.atomic
def subscription_resume(*, office: Office, actor: Any = None) -> Office:
    """Withdraw a pending cancellation (`PATCH {cancel_at_period_end: false}`)."""
    office = lock_office(office.pk)
    advance_all(office=office, as_of=timezone.now())
    _require_subscribed(office, "withdraw the cancellation")
    if not office.cancel_at_period_end:
        raise ConflictError(f"Office '{office.name}' has no pending cancellation.")
    office.cancel_at_period_end = False
    office.save(update_fields=["cancel_at_period_end", "updated_at"])
    audit_record(action="subscription.cancel_withdrawn", actor=actor, target=office, office_id=office.pk)
    return office


def subscription_view(office: Office) -> SubscriptionView:
    """Read an office's subscription, plan, pending change and current period (spec §10)."""
    draft = current_draft(office)
    return SubscriptionView(
        status=office.subscription_status,
        plan=office.current_plan.code if office.current_plan else None,
        pending_plan=office.pending_plan.code if office.pending_plan else None,
        billing_cycle_anchor_date=office.billing_cycle_anchor_date,
        trial_ends_at=office.trial_ends_at,
        cancel_at_period_end=office.cancel_at_period_end,
        current_period_start=draft.period_start if draft else None,
        current_period_end=draft.period_end if draft else None,
    )


# --- Patients: activation is billing's use-case (one lock, one transaction) -----------

ACTIVATION_REFUSED = {
    SubscriptionStatus.SUSPENDED: "office billing is suspended: new patient activations are refused until the "
    "past-due invoices are paid (active patients stay active)",
    SubscriptionStatus.CANCELED: "the office's subscription is canceled: new patient activations are refused",
}


@transaction.atomic
def patient_activate(*, patient: Patient, actor: Any = None, office: Office | None = None) -> Patient:
    """Activate and, if the office is billing, add the patient's line to the current
    cycle's draft — creating that draft first if no run has opened it yet (spec §5).
    The timestamp is taken under the office lock."""
    if office is not None and patient.office_id != office.pk:
        raise NotFoundError(f"Patient {patient.billing_ref} is not a patient of office '{office.name}'.")
    office = lock_office(patient.office_id)
    now = timezone.now()
    advance_all(office=office, as_of=now)
    refusal = ACTIVATION_REFUSED.get(office.subscription_status)  # type: ignore[call-overload]
    if refusal:
        raise ConflictError(
            f"Cannot activate patient {patient.billing_ref}: {refusal}.", {"reason": office.subscription_status}
        )
    last = ActivationInterval.objects.filter(patient=patient).order_by("-activated_at").first()
    if last is not None and last.deactivated_at is None:
        raise ConflictError(f"Patient {patient.billing_ref} is already active.")
    if last is not None and last.deactivated_at is not None and now <= last.deactivated_at:
        now = last.deactivated_at + ONE_MICROSECOND  # keep each patient's history strictly ordered
    ActivationInterval.objects.create(patient=patient, office=office, activated_at=now)
    draft = current_draft(office)
    if draft is not None and not LineItem.objects.filter(invoice=draft, patient=patient).exists():
        assert draft.period_start is not None and draft.plan is not None
        kind = (
            LineKind.RECURRING
            if is_active_at(patient_id=patient.pk, instant=draft.period_start)
            else LineKind.ACTIVATION
        )
        unit = draft.plan.per_patient_cents
        LineItem.objects.create(
            invoice=draft,
            kind=kind,
            patient=patient,
            patient_ref=patient.billing_ref,
            description=patient_line_label(kind, patient.billing_ref),
            quantity=1,
            unit_amount_cents=unit,
            amount_cents=unit,
        )
        Invoice.objects.filter(pk=draft.pk).update(
            subtotal_cents=F("subtotal_cents") + unit, total_cents=F("total_cents") + unit, updated_at=now
        )
        audit_record(
            action="invoice.activation_line_added",
            actor=actor,
            target=draft,
            office_id=office.pk,
            data={"patient_ref": patient.billing_ref, "kind": kind, "amount_cents": unit},
        )
    audit_record(
        action="patient.activated",
        actor=actor,
        target=patient,
        office_id=office.pk,
        data={"patient_ref": patient.billing_ref, "at": now.isoformat()},
    )
    return patient


@transaction.atomic
def patient_deactivate(*, patient: Patient, actor: Any = None, office: Office | None = None) -> Patient:
    """Always allowed; the patient's lines already on invoices stay (no credit, spec §5)."""
    if office is not None and patient.office_id != office.pk:
        raise NotFoundError(f"Patient {patient.billing_ref} is not a patient of office '{office.name}'.")
    office = lock_office(patient.office_id)
    now = timezone.now()
    interval = ActivationInterval.objects.filter(patient=patient, deactivated_at__isnull=True).first()
    if interval is None:
        raise ConflictError(f"Patient {patient.billing_ref} is not active.")
    interval.deactivated_at = max(now, interval.activated_at + ONE_MICROSECOND)
    interval.save(update_fields=["deactivated_at"])
    audit_record(
        action="patient.deactivated",
        actor=actor,
        target=patient,
        office_id=office.pk,
        data={"patient_ref": patient.billing_ref, "at": interval.deactivated_at.isoformat()},
    )
    return patient


# --- One-off invoices and voids --------------------------------------------------------


@dataclass(frozen=True)
class ManualLine:
    """One validated line of a one-off invoice (spec §7)."""

    description: str
    amount_cents: int
    quantity: int

    @property
    def total_cents(self) -> int:
        return self.amount_cents * self.quantity


def _clean_manual_lines(lines: Any) -> list[ManualLine]:
    if not isinstance(lines, list) or not lines:
        raise ApplicationError("'lines' must be a non-empty list of {description, amount_cents, quantity?}.")
    cleaned = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            raise ApplicationError(f"Line {i + 1} must be an object.", {"line": i})
        description = line.get("description")
        amount = line.get("amount_cents")
        quantity = line.get("quantity", 1)
        if not isinstance(description, str) or not description.strip():
            raise ApplicationError(f"Line {i + 1}: 'description' is required.", {"line": i, "field": "description"})
        if len(description) > 500:
            raise ApplicationError(f"Line {i + 1}: 'description' is longer than 500 characters.", {"line": i})
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise ApplicationError(f"Line {i + 1}: 'amount_cents' must be an integer number of cents.", {"line": i})
        if amount < 0:
            raise ApplicationError(f"Line {i + 1}: 'amount_cents' may not be negative (got {amount}).", {"line": i})
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise ApplicationError(f"Line {i + 1}: 'quantity' must be a whole number of at least 1.", {"line": i})
        cleaned.append(ManualLine(description=description.strip(), amount_cents=amount, quantity=quantity))
    if sum(line.total_cents for line in cleaned) <= 0:
        raise ApplicationError("A one-off invoice must have a total above zero.")
    return cleaned


def invoice_create_one_off(*, office: Office, lines: Any, actor: Any = None) -> Invoice:
    """Operator one-off invoice (spec §7): free text passes the PHI guard before anything
    is saved (a refusal is audited after the rollback); finalized, numbered, pushed."""
    cleaned = _clean_manual_lines(lines)
    with audited_refusals(office_id=office.pk, actor=actor, context="one_off_invoice"):
        return _invoice_create_one_off(office=office, lines=cleaned, actor=actor)


@transaction.atomic
def _invoice_create_one_off(*, office: Office, lines: list[ManualLine], actor: Any) -> Invoice:
    office = lock_office(office.pk)
    phi_check(office=office, fields={"lines": [{"description": line.description} for line in lines]})
    currency = office_currency(office)
    invoice = Invoice.objects.create(office=office, kind=InvoiceKind.ONE_OFF, currency=currency)
    LineItem.objects.bulk_create(
        [
            LineItem(
                invoice=invoice,
                kind=LineKind.MANUAL,
                description=line.description,
                quantity=line.quantity,
                unit_amount_cents=line.amount_cents,
                amount_cents=line.total_cents,
            )
            for line in lines
        ]
    )
    audit_record(
        action="invoice.one_off_created",
        actor=actor,
        target=invoice,
        office_id=office.pk,
        data={"line_count": len(lines), "total_cents": sum(line.total_cents for line in lines)},
    )
    return finalize_invoice(invoice=invoice, office=office, stats=AdvanceStats())


def invoice_void(*, invoice: Invoice, actor: Any = None, reason: str = "") -> Invoice:
    """Void an open (or uncollectible) invoice. Its content stays frozen; a correction is a
    new invoice (spec §6). The operator's reason is free text: it passes the PHI guard."""
    with audited_refusals(office_id=invoice.office_id, actor=actor, context="invoice_void"):
        return _invoice_void(invoice=invoice, actor=actor, reason=reason)


@transaction.atomic
def _invoice_void(*, invoice: Invoice, actor: Any, reason: str) -> Invoice:
    office = lock_office(invoice.office_id)
    if reason:
        phi_check(office=office, fields={"reason": reason})
    invoice = Invoice.objects.get(pk=invoice.pk)
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        raise ConflictError(
            f"Invoice {invoice} is {invoice.status}: only open or uncollectible invoices can be voided."
        )
    invoice.status = InvoiceStatus.VOID
    invoice.voided_at = timezone.now()
    if invoice.push_state == PushState.PUSHED:
        # Stripe holds it: its side is pending again until the void is carried there, so a
        # lost task (a broker outage) is found by the hourly catch-up, never forgotten.
        invoice.push_state = PushState.PENDING
    invoice.save(update_fields=["status", "voided_at", "push_state", "updated_at"])
    request_void_sync(invoice.pk)  # Stripe must not collect it (after commit)
    audit_record(
        action="invoice.voided",
        actor=actor,
        target=invoice,
        office_id=invoice.office_id,
        reason=reason[:200],
        data={"number": invoice.number, "total_cents": invoice.total_cents},
    )
    return invoice


def invoice_mark_uncollectible(*, invoice: Invoice, actor: Any = None, reason: str) -> Invoice:
    """Write off an open invoice (spec §12): `uncollectible` with the operator's reason
    (required, PHI-guarded), carried to Stripe after commit like a void, and no longer past
    due for dunning, so the office it held past due or suspended is refreshed at once."""
    reason = (reason or "").strip()
    if not reason:
        raise ApplicationError("Say why the invoice is written off.", {"field": "reason"})
    with audited_refusals(office_id=invoice.office_id, actor=actor, context="invoice_mark_uncollectible"):
        return _invoice_mark_uncollectible(invoice=invoice, actor=actor, reason=reason)


@transaction.atomic
def _invoice_mark_uncollectible(*, invoice: Invoice, actor: Any, reason: str) -> Invoice:
    from billing.dunning import office_payment_state_refresh

    office = lock_office(invoice.office_id)
    phi_check(office=office, fields={"reason": reason})
    invoice = Invoice.objects.get(pk=invoice.pk)
    if invoice.status != InvoiceStatus.OPEN:
        raise ConflictError(f"Invoice {invoice} is {invoice.status}: only an open invoice can be written off.")
    now = timezone.now()
    invoice.status = InvoiceStatus.UNCOLLECTIBLE
    invoice.marked_uncollectible_at = now
    if invoice.push_state == PushState.PUSHED:
        invoice.push_state = PushState.PENDING  # until Stripe has it too (the hourly catch-up carries it)
    invoice.save(update_fields=["status", "marked_uncollectible_at", "push_state", "updated_at"])
    request_void_sync(invoice.pk)  # the status sync: Stripe stops collecting it (after commit)
    audit_record(
        action="invoice.marked_uncollectible",
        actor=actor,
        target=invoice,
        office_id=invoice.office_id,
        reason=reason[:200],
        data={"number": invoice.number, "total_cents": invoice.total_cents, "currency": invoice.currency},
    )
    office_payment_state_refresh(office=office, now=now)
    return invoice


def _user(actor: Any) -> Any:
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None
