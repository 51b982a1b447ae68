"""What a verified Stripe event changes here, and payments recorded outside Stripe (spec §8).

Reactions never trust the order in which events arrive: for every invoice event they
fetch the invoice's *current* state from Stripe (one GET, outside any transaction), then,
under the office lock, move the local invoice forward to match it. Local statuses only
move forward (open → paid | void | uncollectible; uncollectible → paid | void), so a stale
read or a late event can never undo a later one. A payment failure marks an invoice that
Stripe still shows as open as past due. After each change the office's payment state is
recomputed (billing.dunning): past due, suspended, or back to active.

Event types that change something:
- `invoice.paid`, `invoice.payment_succeeded` → paid (`paid_at` from Stripe);
- `invoice.payment_failed`, `payment_intent.payment_failed` (with an `invoice`) → past due;
- `invoice.voided` → void; `invoice.marked_uncollectible` → uncollectible;
- `invoice.finalized`, `invoice.payment_action_required` → the same state sync.
Every other type is recorded and ignored."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import ActorType, Outcome
from audit.services import audit_record
from billing.dates import local_today
from billing.dunning import office_payment_state_refresh
from billing.engine.cycles import local_date, zone
from billing.engine.office import lock_office
from billing.models import Invoice, InvoiceStatus, PushState
from billing.money import format_cents
from billing.phi_guard import audited_refusals, ours, phi_check
from billing.services import invoice_void
from billing.stripe.gateway import Gateway, Permanent, stripe_field
from billing.stripe.push import invoice_push
from config.errors import ApplicationError, ConflictError
from offices.models import Office

logger = logging.getLogger("billing.stripe")

PAYMENT_FAILED_TYPES = frozenset({"invoice.payment_failed", "payment_intent.payment_failed"})
INVOICE_SYNC_TYPES = frozenset(
    {
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "invoice.voided",
        "invoice.marked_uncollectible",
    }
)
HANDLED_TYPES = INVOICE_SYNC_TYPES | {"payment_intent.payment_failed"}

# Which local statuses may follow which (statuses never move backwards).
FORWARD: dict[str, frozenset[str]] = {
    InvoiceStatus.OPEN: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE}),
    InvoiceStatus.UNCOLLECTIBLE: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID}),
}
PAYMENT_NOTE_MAX = 200


class NotAnEvent(ValueError):
    """A verified body that is not a Stripe event."""

    pass


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _id_of(value: Any) -> str:
    """A Stripe reference: an id string, or an expanded object with an id."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class VerifiedEvent:
    """The fields we use of an event whose signature was verified."""

    id: str
    type: str
    created: datetime
    livemode: bool
    api_version: str
    object: dict[str, Any]

    @classmethod
    def from_payload(cls, payload: Any) -> VerifiedEvent:
        if not isinstance(payload, dict) or payload.get("object") != "event":
            raise NotAnEvent("not a Stripe event object")
        event_id, event_type = payload.get("id"), payload.get("type")
        created = _ts(payload.get("created"))
        data = payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not (isinstance(event_id, str) and event_id.startswith("evt_") and 4 < len(event_id) <= 255):
            raise NotAnEvent("missing or malformed event id")
        if not (isinstance(event_type, str) and 0 < len(event_type) <= 100):
            raise NotAnEvent("missing or malformed event type")
        if created is None or not isinstance(obj, dict):
            raise NotAnEvent("missing created or data.object")
        return cls(
            id=event_id,
            type=event_type,
            created=created,
            livemode=bool(payload.get("livemode")),
            api_version=str(payload.get("api_version") or "")[:64],
            object=obj,
        )

    @property
    def object_type(self) -> str:
        return str(self.object.get("object") or "")[:64]

    @property
    def object_id(self) -> str:
        return _id_of(self.object.get("id"))[:255]

    @property
    def stripe_invoice_id(self) -> str:
        """The invoice the event is about, if any."""
        if self.object_type == "invoice":
            return self.object_id
        if self.object_type == "payment_intent":
            return _id_of(self.object.get("invoice"))  # absent in the newest API versions
        return ""

    def office(self) -> Office | None:
        customer = _id_of(self.object.get("customer"))
        if not customer:
            return None
        return Office.objects.filter(payment_provider_customer_id=customer).first()


def _local_invoice(event: VerifiedEvent, stripe_invoice_id: str) -> Invoice | None:
    """Our invoice for that Stripe invoice: by the stored id, else by the metadata we set
    (a push that crashed before storing the id), if the customer is that office's."""
    found = Invoice.objects.filter(stripe_invoice_id=stripe_invoice_id).first()
    if found is not None or event.object_type != "invoice":
        return found
    metadata = event.object.get("metadata")
    local_id = metadata.get("invoice_id") if isinstance(metadata, dict) else None
    if not (isinstance(local_id, str) and local_id.isdigit()):
        return None
    candidate = Invoice.objects.select_related("office").filter(pk=int(local_id)).first()
    customer = _id_of(event.object.get("customer"))
    if candidate is None or not customer or candidate.office.payment_provider_customer_id != customer:
        return None
    if candidate.stripe_invoice_id not in (None, stripe_invoice_id):
        return None
    return candidate


def stripe_event_react(*, event: VerifiedEvent, gateway: Gateway | None = None) -> str:
    """Apply one verified event; returns a short outcome for the event record. Raises
    on failures worth a retry (the view answers 500 and Stripe delivers again)."""
    if event.type not in HANDLED_TYPES:
        return "ignored: type not handled"
    stripe_invoice_id = event.stripe_invoice_id
    if not stripe_invoice_id:
        return "ignored: no invoice"
    invoice = _local_invoice(event, stripe_invoice_id)
    if invoice is None:
        return "ignored: not one of our invoices"
    gw = gateway or Gateway()
    try:
        current = gw.invoice_retrieve(stripe_invoice_id=stripe_invoice_id)
    except Permanent as exc:
        # Gone or unreadable in Stripe: nothing to apply; reconciliation reports it.
        logger.warning("event %s: invoice %s not readable in Stripe: %s", event.id, stripe_invoice_id, exc)
        return f"ignored: Stripe invoice unreadable ({exc.code or 'error'})"
    return _apply(
        event=event,
        invoice_id=invoice.pk,
        office_id=invoice.office_id,
        stripe_invoice_id=stripe_invoice_id,
        current=current,
    )


def _transition_ts(current: Any, name: str) -> datetime | None:
    try:
        return _ts(current["status_transitions"][name])
    except (KeyError, TypeError):
        return None


_field = stripe_field


@transaction.atomic
def _apply(*, event: VerifiedEvent, invoice_id: int, office_id: int, stripe_invoice_id: str, current: Any) -> str:
    # An invoice never changes office (a frozen column once finalized), so the office read
    # with it above is the one to lock.
    office = lock_office(office_id)
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    if invoice.office_id != office.pk:  # cannot happen; if it did, the wrong lock is held
        raise ConflictError(f"Invoice {invoice_id} moved from office {office_id} to {invoice.office_id}.")
    now = timezone.now()
    remote = str(_field(current, "status") or "")
    outcome = f"no change (local {invoice.status}, Stripe {remote})"
    if invoice.stripe_invoice_id is None:
        Invoice.objects.filter(pk=invoice.pk, stripe_invoice_id__isnull=True).update(
            stripe_invoice_id=stripe_invoice_id, updated_at=now
        )
    common = {"number": invoice.number, "stripe_invoice_id": stripe_invoice_id, "event_id": event.id}

    if remote in FORWARD.get(invoice.status, frozenset()):
        if remote == InvoiceStatus.PAID:
            # The pinned API version reports a payment outside Stripe as an amount; the
            # `paid_out_of_band` of older versions is only a parameter of /pay now.
            out_of_band = int(_field(current, "amount_paid_off_stripe") or 0) > 0
            invoice.status = InvoiceStatus.PAID
            invoice.paid_at = _transition_ts(current, "paid_at") or min(event.created, now)
            fields = ["status", "paid_at", "updated_at"]
            if out_of_band and not invoice.payment_note:
                invoice.payment_note = "paid out of band (recorded in Stripe)"
                fields.append("payment_note")
            invoice.save(update_fields=fields)
            audit_record(
                action="payment.succeeded",
                actor_type=ActorType.STRIPE,
                target=invoice,
                office_id=office.pk,
                data={
                    **common,
                    "total_cents": invoice.total_cents,
                    "currency": invoice.currency,
                    "out_of_band": out_of_band,
                },
            )
            outcome = "paid"
        elif remote == InvoiceStatus.VOID:
            invoice_void(invoice=invoice, reason=ours("voided in Stripe"))
            outcome = "void"
        elif remote == InvoiceStatus.UNCOLLECTIBLE:
            invoice.status = InvoiceStatus.UNCOLLECTIBLE
            invoice.marked_uncollectible_at = _transition_ts(current, "marked_uncollectible_at") or now
            invoice.save(update_fields=["status", "marked_uncollectible_at", "updated_at"])
            audit_record(
                action="invoice.marked_uncollectible",
                actor_type=ActorType.STRIPE,
                target=invoice,
                office_id=office.pk,
                data={**common, "total_cents": invoice.total_cents},
            )
            outcome = "uncollectible"
    elif event.type in PAYMENT_FAILED_TYPES and invoice.status == InvoiceStatus.OPEN and remote == "open":
        newly = invoice.past_due_at is None
        if newly:
            # Past due from the failed attempt (the event's time), never later than now.
            invoice.past_due_at = min(event.created, now)
            invoice.save(update_fields=["past_due_at", "updated_at"])
            audit_record(
                action="invoice.past_due",
                actor_type=ActorType.STRIPE,
                target=invoice,
                office_id=office.pk,
                data={
                    **common,
                    "total_cents": invoice.total_cents,
                    "past_due_at": invoice.past_due_at.isoformat(),
                    "reason": "payment_failed",
                },
            )
        # One entry per failed attempt: Stripe sends invoice.payment_failed for each (the
        # payment intent's event about the same attempt only marks the invoice past due).
        if event.type == "invoice.payment_failed":
            audit_record(
                action="payment.failed",
                actor_type=ActorType.STRIPE,
                target=invoice,
                office_id=office.pk,
                outcome=Outcome.FAILURE,
                data={
                    **common,
                    "total_cents": invoice.total_cents,
                    "attempt_count": _field(current, "attempt_count"),
                    "past_due_at": invoice.past_due_at.isoformat() if invoice.past_due_at else None,
                },
            )
        outcome = "past_due" if newly else "already past due"

    office_payment_state_refresh(office=office, now=now, actor_type=ActorType.STRIPE)
    return outcome


# --- Payments made outside Stripe ------------------------------------------------------


PAYMENT_METHODS = {
    "cheque": "Cheque",
    "wire": "Wire transfer",
    "ach": "ACH transfer",
    "cash": "Cash",
    "other": "Other",
}


def _payment_details(
    invoice: Invoice, *, method: str | None, reference: str, received_on: date | None, amount_cents: int | None
) -> dict[str, Any]:
    """How, with what reference, when and how much the office paid: checked before anything
    is written, each refusal naming its field."""
    details: dict[str, Any] = {}
    if method is not None:
        if method not in PAYMENT_METHODS:
            raise ApplicationError(f"'method' must be one of {', '.join(PAYMENT_METHODS)}.", {"field": "method"})
        details["method"] = method
    reference = (reference or "").strip()
    if reference:
        details["reference"] = reference
    if received_on is not None:
        today = local_today(invoice.office.timezone)
        issued = local_date(invoice.finalized_at, zone(invoice.office.timezone)) if invoice.finalized_at else None
        if received_on > today:
            raise ApplicationError(f"The payment date {received_on} is in the future.", {"field": "received_on"})
        if issued is not None and received_on < issued:
            raise ApplicationError(
                f"The payment date {received_on} is before the invoice was issued ({issued}).",
                {"field": "received_on"},
            )
        details["received_on"] = received_on.isoformat()
    if amount_cents is not None:
        if amount_cents != invoice.total_cents:
            raise ApplicationError(
                f"The amount must be the invoice's total, {format_cents(invoice.total_cents, invoice.currency)}: "
                "partial payments are not recorded yet.",
                {"field": "amount"},
            )
        details["amount_cents"] = amount_cents
    return details


def _payment_note(details: dict[str, Any], note: str) -> str:
    parts = [PAYMENT_METHODS[details["method"]]] if "method" in details else []
    if "reference" in details:
        parts.append(details["reference"])
    if "received_on" in details:
        parts.append(f"received {details['received_on']}")
    text = " ".join(parts)
    return f"{text} — {note}" if text and note else (text or note)


def invoice_mark_paid_out_of_band(
    *,
    invoice: Invoice,
    actor: Any,
    note: str = "",
    method: str | None = None,
    reference: str = "",
    received_on: date | None = None,
    amount_cents: int | None = None,
    gateway: Gateway | None = None,
) -> Invoice:
    """Record a payment made outside Stripe (cheque, wire): the Stripe invoice is marked
    `paid_out_of_band` (so Stripe never charges it), then the local invoice is paid, with
    the operator's note (free text: PHI-guarded) and an audit entry (spec §8).

    Runs outside transactions (it calls Stripe). An invoice not yet pushed is pushed first,
    so the two sides never disagree about whether it exists."""
    if transaction.get_connection().in_atomic_block:
        raise RuntimeError("invoice_mark_paid_out_of_band calls Stripe: run it outside transactions (spec §8)")
    invoice = Invoice.objects.select_related("office").get(pk=invoice.pk)
    details = _payment_details(
        invoice, method=method, reference=reference, received_on=received_on, amount_cents=amount_cents
    )
    note = _payment_note(details, (note or "").strip())
    if not note:
        raise ApplicationError("A note is required (e.g. the cheque or wire reference).", {"field": "note"})
    if len(note) > PAYMENT_NOTE_MAX:
        raise ApplicationError(f"The note is limited to {PAYMENT_NOTE_MAX} characters.", {"field": "note"})
    with audited_refusals(office_id=invoice.office_id, actor=actor, context="invoice_mark_paid_out_of_band"):
        phi_check(office=invoice.office, fields={"payment_note": note})
    if invoice.status not in FORWARD:
        raise ConflictError(f"Invoice {invoice} is {invoice.status}: only open or uncollectible invoices can be paid.")

    gw = gateway or Gateway()
    if invoice.stripe_invoice_id is None and invoice.push_state in (PushState.PENDING, PushState.FAILED):
        invoice = invoice_push(invoice_id=invoice.pk, gateway=gw)
    if invoice.stripe_invoice_id:
        remote = gw.invoice_retrieve(stripe_invoice_id=invoice.stripe_invoice_id)
        status = str(_field(remote, "status"))
        if status in ("open", "uncollectible"):
            gw.invoice_pay(
                stripe_invoice_id=invoice.stripe_invoice_id,
                key=f"invoice:{invoice.pk}:paid_out_of_band",
                out_of_band=True,
            )
        elif not (status == "paid" and int(_field(remote, "amount_paid_off_stripe") or 0) > 0):
            raise ConflictError(
                f"Invoice {invoice} is {status} in Stripe: a payment outside Stripe cannot be recorded for it."
            )
    return _record_out_of_band(invoice_id=invoice.pk, actor=actor, note=note, details=details)


@transaction.atomic
def _record_out_of_band(*, invoice_id: int, actor: Any, note: str, details: dict[str, Any]) -> Invoice:
    office = lock_office(Invoice.objects.values_list("office_id", flat=True).get(pk=invoice_id))
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    now = timezone.now()
    if invoice.status in FORWARD:
        invoice.status = InvoiceStatus.PAID
        invoice.paid_at = now
    elif invoice.status != InvoiceStatus.PAID:
        raise ConflictError(f"Invoice {invoice} is {invoice.status}: it cannot be marked paid.")
    invoice.payment_note = note
    invoice.save(update_fields=["status", "paid_at", "payment_note", "updated_at"])
    audit_record(
        action="payment.out_of_band",
        actor=actor,
        target=invoice,
        office_id=office.pk,
        data={
            "number": invoice.number,
            "total_cents": invoice.total_cents,
            "currency": invoice.currency,
            "stripe_invoice_id": invoice.stripe_invoice_id,
            **details,
        },
    )
    office_payment_state_refresh(office=office, now=now)
    return invoice
