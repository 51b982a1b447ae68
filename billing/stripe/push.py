"""Pushing finalized invoices to Stripe (spec §8), resumable at every step.

Order: the Stripe customer (once per office) → the Stripe invoice as a draft (our number,
the office's collection method, metadata {invoice_id, office_id}) → its items, added to
that invoice explicitly → finalization. Each POST has an idempotency key derived from
the local invoice and the step; the Stripe id is stored as soon as it is known; a push
resumed after the key may have expired first looks the invoice up by customer and
metadata. Stripe writes per invoice depend on the number of (kind, unit price) groups
and manual lines, never on the patient count. Never called inside a transaction."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.models import ActorType, Outcome
from audit.services import audit_record
from billing.dates import local_period
from billing.engine.labels import PATIENT_GROUP_LABEL
from billing.models import PATIENT_LINE_KINDS, Invoice, InvoiceStatus, LineItem, PushState
from billing.phi_guard import PhiIndex, PhiRefused, invoice_tokens
from billing.selectors import patient_line_groups
from billing.stripe.gateway import Gateway, GatewayError, Transient
from offices.models import CollectionMethod, Office

logger = logging.getLogger("billing.stripe")


@dataclass(frozen=True)
class StripeItem:
    """One item of a Stripe invoice, with the key that makes its creation idempotent."""

    key: str
    description: str
    quantity: int
    unit_amount_cents: int


def stripe_items(invoice: Invoice) -> list[StripeItem]:
    """Patient lines aggregated per (kind, unit price); other lines one item each."""
    period = ""
    if invoice.period_start and invoice.period_end:
        period = f", {local_period(invoice.period_start, invoice.period_end, invoice.office.timezone)}"
    items: list[StripeItem] = []
    groups = patient_line_groups(invoice)
    for group in groups:
        items.append(
            StripeItem(
                key=f"{group['kind']}:{group['unit_amount_cents']}",
                description=f"{PATIENT_GROUP_LABEL[group['kind']]}{period}",
                quantity=group["n"],
                unit_amount_cents=group["unit_amount_cents"],
            )
        )
    for line in LineItem.objects.filter(invoice=invoice).exclude(kind__in=PATIENT_LINE_KINDS).order_by("id"):
        items.append(
            StripeItem(
                key=f"line:{line.pk}",
                description=line.description,
                quantity=line.quantity,
                unit_amount_cents=line.unit_amount_cents,
            )
        )
    return items


def customer_ensure(*, office: Office, gateway: Gateway) -> str:
    """One Stripe Customer per office (spec §8): looked up by `metadata.office_id` first —
    an earlier attempt may have created it and lost the answer, longer ago than Stripe
    keeps idempotency keys — then created once (idempotency key from the office)."""
    if office.payment_provider_customer_id:
        return office.payment_provider_customer_id
    existing = sorted(gateway.customers_of_office(office=office), key=lambda c: (int(c["created"]), str(c["id"])))
    if existing:
        customer_id = str(existing[0]["id"])  # the first one made; any later copy is reported by reconciliation
        found = True
    else:
        customer = gateway.customer_create(office=office, key=f"office:{office.pk}:customer")
        customer_id = str(customer["id"])
        found = False
    Office.objects.filter(pk=office.pk, payment_provider_customer_id__isnull=True).update(
        payment_provider_customer_id=customer_id
    )
    office.refresh_from_db(fields=["payment_provider_customer_id"])
    audit_record(
        action="stripe.customer_found" if found else "stripe.customer_created",
        actor_type=ActorType.SYSTEM,
        target=office,
        office_id=office.pk,
        data={"customer": office.payment_provider_customer_id},
    )
    return str(office.payment_provider_customer_id)


def _metadata(obj: Any) -> dict[str, Any]:
    """A Stripe object's metadata as a plain dict (StripeObject is not a dict in v15)."""
    try:
        metadata = obj["metadata"]
    except KeyError:
        return {}
    return dict(metadata.to_dict()) if metadata else {}


def _find_existing(gateway: Gateway, customer_id: str, invoice: Invoice) -> str | None:
    for found in gateway.invoices_list(params={"customer": customer_id, "limit": 100}):
        if str(_metadata(found).get("invoice_id", "")) == str(invoice.pk):
            return str(found["id"])
    return None


def _item_keys_on(gateway: Gateway, stripe_invoice_id: str) -> set[str]:
    """The item keys already on a Stripe draft, from all its lines (listed page by page: a
    retrieved invoice embeds only the first page)."""
    keys: set[str] = set()
    for line in gateway.invoice_lines_list(stripe_invoice_id=stripe_invoice_id):
        metadata = _metadata(line)
        if metadata.get("item_key"):
            keys.add(str(metadata["item_key"]))
    return keys


# How long a push or a void sync may hold an invoice's claim. Longer than any one push
# (a few requests with their retries); a claim whose holder died lapses after it.
PUSH_CLAIM = timedelta(minutes=10)


class ClaimBusy(Transient):
    """Another push or void sync of this invoice is in flight: retried later."""


def _claim(invoice_id: int) -> bool:
    """Take the invoice's push claim (a conditional UPDATE: at most one holder)."""
    now = timezone.now()
    free = Q(push_claimed_until__isnull=True) | Q(push_claimed_until__lt=now)
    return bool(Invoice.objects.filter(free, pk=invoice_id).update(push_claimed_until=now + PUSH_CLAIM))


def _release(invoice_id: int) -> None:
    Invoice.objects.filter(pk=invoice_id).update(push_claimed_until=None)


def push_claim_free() -> Q:
    """Invoices whose push nobody holds now (the hourly re-enqueue skips the others)."""
    return Q(push_claimed_until__isnull=True) | Q(push_claimed_until__lt=timezone.now())


class _VoidedMidPush(Exception):
    """The invoice was voided locally while its push ran: stop writing to Stripe."""


def _stop_if_voided(invoice_id: int) -> None:
    if Invoice.objects.filter(pk=invoice_id, status=InvoiceStatus.VOID).exists():
        raise _VoidedMidPush


def _payloads_refused(invoice: Invoice, office: Office, phi: PhiIndex) -> PhiRefused | None:
    """Every text the push would send, checked before the first write: a refusal half-way
    would leave a half-made Stripe draft behind (spec §9)."""
    try:
        phi.check(
            ours_fields={"invoice.number", "invoice.metadata.invoice_id", "items.item_key"},
            fields={
                "customer": {"name": office.name, "email": office.billing_email},
                "invoice": {"number": invoice.number, "metadata": {"invoice_id": str(invoice.pk)}},
                "items": [{"description": item.description, "item_key": item.key} for item in stripe_items(invoice)],
            },
        )
    except PhiRefused as exc:
        return exc
    return None


def _refuse_push(invoice: Invoice, office: Office, refused: PhiRefused) -> Invoice:
    message = (
        f"Not sent: the PHI guard refused {refused.kind.replace('_', ' ')} in {refused.field_name}. "
        "Nothing reached Stripe; void the invoice and bill it again without patient details."
    )
    Invoice.objects.filter(pk=invoice.pk).update(push_state=PushState.FAILED, push_error=message[:500])
    audit_record(
        action="phi_guard.refused",
        target=office,
        office_id=office.pk,
        outcome=Outcome.DENIED,
        reason=f"{refused.kind} in {refused.field_name}",
        data={"context": "stripe_push", "invoice_id": invoice.pk, "field": refused.field_name, "kind": refused.kind},
    )
    logger.error(
        "invoice %s: push refused by the PHI guard (%s in %s)", invoice.number, refused.kind, refused.field_name
    )
    invoice.refresh_from_db()
    return invoice


def invoice_push(*, invoice_id: int, gateway: Gateway | None = None) -> Invoice:
    """Bring the Stripe side of one finalized invoice up to date (spec §8). Safe to call
    again, and never at the same time as another push or a void sync of the invoice: each
    holds the invoice's claim, and the status is re-read before creating and before
    finalizing, so a void that lands mid-push stops it before Stripe can collect."""
    if transaction.get_connection().in_atomic_block:
        raise RuntimeError("invoice_push runs outside transactions (spec §8)")
    if not _claim(invoice_id):
        return Invoice.objects.get(pk=invoice_id)  # in flight elsewhere: that holder finishes it
    try:
        return _claimed_push(invoice_id=invoice_id, gateway=gateway)
    finally:
        _release(invoice_id)


def _claimed_push(*, invoice_id: int, gateway: Gateway | None) -> Invoice:
    invoice = Invoice.objects.select_related("office").get(pk=invoice_id)  # re-read under the claim
    if invoice.push_state not in (PushState.PENDING, PushState.FAILED):
        return invoice
    if invoice.status == InvoiceStatus.VOID:
        # Voided locally, the Stripe side not settled yet (the void sync's task was lost,
        # or the push was asked first): settle it now, under the claim this push holds.
        _claimed_void_sync(invoice_id=invoice.pk, gateway=gateway)
        return Invoice.objects.get(pk=invoice.pk)
    if invoice.status == InvoiceStatus.UNCOLLECTIBLE:
        # Written off here before Stripe heard of the write-off: carry it (a lost task).
        _claimed_write_off_sync(invoice=invoice, gateway=gateway)
        return Invoice.objects.get(pk=invoice.pk)
    if invoice.status == InvoiceStatus.DRAFT:
        raise ValueError(f"invoice {invoice_id} is a draft; only finalized invoices are pushed")
    office = invoice.office
    phi = PhiIndex.for_office(office).trusting(*invoice_tokens(invoice))  # once per push
    refused = _payloads_refused(invoice, office, phi)
    if refused is not None:
        return _refuse_push(invoice, office, refused)
    gw = gateway or Gateway()
    first_attempt = invoice.push_attempts == 0 and invoice.stripe_invoice_id is None
    # Counted before calling Stripe: an attempt that dies half-way is known to the next one.
    Invoice.objects.filter(pk=invoice.pk).update(push_attempts=F("push_attempts") + 1)
    try:
        stripe_id = _push(invoice=invoice, office=office, gateway=gw, first_attempt=first_attempt, phi=phi)
    except _VoidedMidPush:
        logger.info("invoice %s voided during its push: stopped; the void sync settles Stripe", invoice.number)
        invoice.refresh_from_db()
        return invoice
    except GatewayError as exc:
        Invoice.objects.filter(pk=invoice.pk).update(
            push_state=PushState.PENDING if exc.transient else PushState.FAILED, push_error=str(exc)[:500]
        )
        audit_record(
            action="invoice.push_failed",
            target=invoice,
            office_id=office.pk,
            outcome=Outcome.FAILURE,
            reason=type(exc).__name__,
            data={"number": invoice.number, "transient": exc.transient},
        )
        raise
    Invoice.objects.filter(pk=invoice.pk).update(
        push_state=PushState.PUSHED, push_error="", stripe_invoice_id=stripe_id
    )
    audit_record(
        action="invoice.pushed",
        target=invoice,
        office_id=office.pk,
        data={"number": invoice.number, "stripe_invoice_id": stripe_id, "total_cents": invoice.total_cents},
    )
    invoice.refresh_from_db()
    return invoice


def _push(
    *, invoice: Invoice, office: Office, gateway: Gateway, first_attempt: bool, phi: PhiIndex | None = None
) -> str:
    customer_id = customer_ensure(office=office, gateway=gateway)
    key = f"invoice:{invoice.pk}"
    stripe_id = invoice.stripe_invoice_id
    created_now = False
    if stripe_id is None and not first_attempt:
        # An earlier attempt may have created it and died before storing the id, possibly
        # longer ago than Stripe keeps idempotency keys: look it up before creating one.
        stripe_id = _find_existing(gateway, customer_id, invoice)
    if stripe_id is None:
        _stop_if_voided(invoice.pk)
        params: dict[str, Any] = {
            "customer": customer_id,
            "collection_method": office.collection_method,
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "currency": invoice.currency,
            "number": invoice.number,
            "metadata": {"invoice_id": str(invoice.pk), "office_id": str(office.pk)},
        }
        if office.collection_method == CollectionMethod.SEND_INVOICE:
            params["days_until_due"] = office.days_until_due
        created = gateway.invoice_create(office=office, params=params, key=f"{key}:create", phi=phi)  # type: ignore[arg-type]
        stripe_id = str(created["id"])
        created_now = True
    # Store the id at once: whatever happens next, a retry resumes on this invoice.
    Invoice.objects.filter(pk=invoice.pk, stripe_invoice_id__isnull=True).update(stripe_invoice_id=stripe_id)
    current = gateway.invoice_retrieve(stripe_invoice_id=stripe_id)
    if current["status"] == "draft":
        # A draft this attempt just created has no items yet; a resumed one is listed.
        present = set() if created_now else _item_keys_on(gateway, stripe_id)
        for item in _missing(stripe_items(invoice), present):
            gateway.invoice_item_create(
                office=office,
                params={
                    "customer": customer_id,
                    "invoice": stripe_id,
                    "currency": invoice.currency,
                    "description": item.description,
                    "quantity": item.quantity,
                    "unit_amount_decimal": Decimal(item.unit_amount_cents),  # an exact integer of cents
                    "metadata": {"invoice_id": str(invoice.pk), "item_key": item.key},
                },
                key=f"{key}:item:{item.key}",
                phi=phi,
            )
        _stop_if_voided(invoice.pk)  # finalizing starts automatic collection
        current = gateway.invoice_finalize(stripe_invoice_id=stripe_id, key=f"{key}:finalize")
    if int(current["total"]) != invoice.total_cents:
        audit_record(
            action="reconciliation.mismatch",
            target=invoice,
            office_id=office.pk,
            outcome=Outcome.FAILURE,
            reason="total",
            data={"local_cents": invoice.total_cents, "stripe_cents": int(current["total"]), "stripe_id": stripe_id},
        )
        logger.error("invoice %s: Stripe total %s != local %s", invoice.number, current["total"], invoice.total_cents)
    return stripe_id


def _missing(items: Iterable[StripeItem], present: set[str]) -> list[StripeItem]:
    return [item for item in items if item.key not in present]


def customer_sync(*, office_id: int, gateway: Gateway | None = None) -> None:
    """Later changes of the office's name or billing email are synced to its customer.

    The change is marked on the office (`customer_identity_changed_at`) in the same
    transaction as the change itself, and the mark is cleared here only once Stripe has
    the values, and only if no newer change came meanwhile; so a lost task or a broker
    outage delays the sync (the hourly sweep re-enqueues it), never loses it."""
    office = Office.objects.get(pk=office_id)
    marked = office.customer_identity_changed_at
    if not office.payment_provider_customer_id:
        return  # created with the current values; the mark stays until a customer exists
    stamp = (marked or office.updated_at).timestamp()
    (gateway or Gateway()).customer_update(
        office=office,
        customer_id=office.payment_provider_customer_id,
        key=f"office:{office.pk}:customer-update:{stamp:.6f}",
    )
    if marked is not None:
        Office.objects.filter(pk=office.pk, customer_identity_changed_at=marked).update(
            customer_identity_changed_at=None
        )
    audit_record(
        action="stripe.customer_updated", target=office, office_id=office.pk, data={"fields": ["name", "email"]}
    )


def invoice_void_sync(*, invoice_id: int, gateway: Gateway | None = None) -> None:
    """Carry a local void to Stripe, so that Stripe never collects a voided invoice. Waits
    for a push in flight (ClaimBusy is transient: the task retries), then sees what it did."""
    if not _claim(invoice_id):
        raise ClaimBusy(f"invoice {invoice_id}: a push is in flight; the void sync retries")
    try:
        _claimed_void_sync(invoice_id=invoice_id, gateway=gateway)
    finally:
        _release(invoice_id)


def _stripe_copy_or_settle(invoice: Invoice, gw: Gateway) -> str | None:
    """The Stripe invoice of a voided or written-off invoice (looked up by metadata when an
    attempt may have created it without storing its id); None when Stripe never had it,
    and then its Stripe side is settled: nothing there to collect."""
    office = invoice.office
    stripe_id = invoice.stripe_invoice_id
    if stripe_id is None and invoice.push_attempts and office.payment_provider_customer_id:
        stripe_id = _find_existing(gw, office.payment_provider_customer_id, invoice)
    if stripe_id is None:
        Invoice.objects.filter(pk=invoice.pk, push_state__in=[PushState.PENDING, PushState.FAILED]).update(
            push_state=PushState.NOT_REQUIRED
        )
    return stripe_id


def _claimed_void_sync(*, invoice_id: int, gateway: Gateway | None) -> None:
    invoice = Invoice.objects.select_related("office").get(pk=invoice_id)
    if invoice.status == InvoiceStatus.UNCOLLECTIBLE:
        _claimed_write_off_sync(invoice=invoice, gateway=gateway)
        return
    if invoice.status != InvoiceStatus.VOID:
        return
    gw = gateway or Gateway()
    office = invoice.office
    stripe_id = _stripe_copy_or_settle(invoice, gw)
    if stripe_id is None:
        return
    remote = gw.invoice_retrieve(stripe_invoice_id=stripe_id)
    status = remote["status"]
    if status == "draft":
        gw.invoice_delete_draft(stripe_invoice_id=stripe_id)
    elif status in ("open", "uncollectible"):
        gw.invoice_void(stripe_invoice_id=stripe_id, key=f"invoice:{invoice.pk}:void")
    elif status == "paid":
        audit_record(
            action="reconciliation.mismatch",
            target=invoice,
            office_id=office.pk,
            outcome=Outcome.FAILURE,
            reason="status",
            data={"local": "void", "stripe": "paid", "stripe_id": stripe_id},
        )
        # Settled as far as we can (an operator refunds): not retried hourly; the daily
        # reconciliation keeps reporting the status mismatch until someone acts.
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=stripe_id, push_state=PushState.PUSHED)
        return
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=stripe_id, push_state=PushState.PUSHED)
    audit_record(action="invoice.voided_in_stripe", target=invoice, office_id=office.pk, data={"stripe_id": stripe_id})


def _claimed_write_off_sync(*, invoice: Invoice, gateway: Gateway | None) -> None:
    """Carry an operator's write-off to Stripe (spec §12), under the invoice's claim: an
    open Stripe invoice is marked uncollectible; one Stripe never had needs nothing; one
    Stripe already settled otherwise is a mismatch for an operator, reported once."""
    office = invoice.office
    gw = gateway or Gateway()
    stripe_id = _stripe_copy_or_settle(invoice, gw)
    if stripe_id is None:
        return
    remote = gw.invoice_retrieve(stripe_invoice_id=stripe_id)
    status = remote["status"]
    if status == "draft":
        gw.invoice_delete_draft(stripe_invoice_id=stripe_id)  # never sent: nothing to collect
    elif status == "open":
        gw.invoice_mark_uncollectible(stripe_invoice_id=stripe_id, key=f"invoice:{invoice.pk}:uncollectible")
    elif status != "uncollectible":
        audit_record(
            action="reconciliation.mismatch",
            target=invoice,
            office_id=office.pk,
            outcome=Outcome.FAILURE,
            reason="status",
            data={"local": "uncollectible", "stripe": status, "stripe_id": stripe_id},
        )
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=stripe_id, push_state=PushState.PUSHED)
    if status in ("open", "uncollectible"):
        audit_record(
            action="invoice.marked_uncollectible_in_stripe",
            target=invoice,
            office_id=office.pk,
            data={"stripe_id": stripe_id},
        )
