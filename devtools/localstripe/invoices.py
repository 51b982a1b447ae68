"""Standalone invoices: create, update, delete, list, finalize, send, pay, void, mark
uncollectible, automatic collection; localstripe's subscription invoices go through the
same finalize and pay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from localstripe import resources as ls
from localstripe.errors import UserError

from devtools.localstripe.common import (
    ACCOUNT_NAME,
    DEFAULT_CURRENCY,
    Data,
    _as_bool,
    _as_int,
    _as_str,
    _created_filter,
    _error,
    _idempotency_key,
    _metadata,
    _now,
    _objects,
    _page,
    _reject_unknown,
    _request_id,
    _retrieve,
    logger,
)
from devtools.localstripe.events import _emit
from devtools.localstripe.items import _attach_item

DAY = 86_400
AUTO_COLLECT_DELAY = 1.0  # seconds between finalization and the automatic payment attempt
INVOICE_NUMBER_MAX_LENGTH = 26

_background: set[asyncio.Future[None]] = set()


COLLECTION_METHODS = ("charge_automatically", "send_invoice")
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
INVOICE_CREATE_PARAMS = (
    "customer",
    "subscription",
    "collection_method",
    "days_until_due",
    "due_date",
    "number",
    "metadata",
    "auto_advance",
    "pending_invoice_items_behavior",
    "description",
    "currency",
    "footer",
    "default_payment_method",
    "statement_descriptor",
    "default_tax_rates",
    "tax_percent",
)
INVOICE_UPDATE_PARAMS = (
    "metadata",
    "description",
    "footer",
    "number",
    "collection_method",
    "days_until_due",
    "due_date",
    "auto_advance",
    "default_payment_method",
    "statement_descriptor",
)
# What Stripe still lets you change once an invoice is finalized.
INVOICE_UPDATE_AFTER_FINALIZATION = ("metadata", "description", "footer", "auto_advance")

INVOICE_DEFAULTS: Data = {
    "account_country": "US",
    "account_name": ACCOUNT_NAME,
    "account_tax_ids": None,
    "amount_overpaid": 0,
    "amount_shipping": 0,
    "application": None,
    "auto_advance": False,
    "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
    "automatically_finalizes_at": None,
    "confirmation_secret": None,
    "custom_fields": None,
    "customer_address": None,
    "customer_name": None,
    "customer_phone": None,
    "customer_shipping": None,
    "customer_tax_exempt": "none",
    "customer_tax_ids": (),
    "days_until_due": None,
    "default_payment_method": None,
    "default_source": None,
    "discounts": (),
    "due_date": None,
    "effective_at": None,
    "footer": None,
    "from_invoice": None,
    "hosted_invoice_url": None,
    "invoice_pdf": None,
    "issuer": {"type": "self"},
    "last_finalization_error": None,
    "latest_revision": None,
    "number": None,
    "on_behalf_of": None,
    "payment_settings": {"default_mandate": None, "payment_method_options": None, "payment_method_types": None},
    "post_payment_credit_notes_amount": 0,
    "pre_payment_credit_notes_amount": 0,
    "rendering": None,
    "shipping_cost": None,
    "shipping_details": None,
    "test_clock": None,
    "threshold_reason": None,
    "total_discount_amounts": (),
    "total_pretax_credit_amounts": (),
    "transfer_data": None,
    "_paid_out_of_band": False,
    "_uncollectible": False,
    "_auto_numbered": False,
}
STATUS_TRANSITIONS = {"finalized_at": None, "marked_uncollectible_at": None, "paid_at": None, "voided_at": None}


def _invoice_status(self: Any) -> str:
    if self._draft:
        return "draft"
    if self._voided:
        return "void"
    if self._paid_out_of_band or self.total <= 0:
        return "paid"
    if self.payment_intent:
        intent = ls.store.get(f"payment_intent:{self.payment_intent}")
        if intent is not None and intent.status == "succeeded":
            return "paid"
        if intent is not None and intent.status == "canceled":
            return "void"
    if self._uncollectible:
        return "uncollectible"
    return "open"


def _invoice_amount_paid(self: Any) -> int:
    return int(self.amount_due) if self.status == "paid" else 0


def _invoice_amount_remaining(self: Any) -> int:
    return 0 if self.status in ("paid", "void") else int(self.amount_due)


def _invoice_next_payment_attempt(self: Any) -> int | None:
    # Stripe: null unless automatic collection will try (again); we schedule one attempt.
    if self.status == "open" and self.auto_advance and self.collection_method == "charge_automatically":
        return self.status_transitions.get("finalized_at") or self.created
    return None


def _transition(invoice: Any, name: str) -> int:
    stamp = _now()
    invoice.status_transitions = {**STATUS_TRANSITIONS, **invoice.status_transitions, name: stamp}
    return stamp


def _check_collection(method: str, days_until_due: int | None, due_date: int | None) -> None:
    if method not in COLLECTION_METHODS:
        raise _error(400, f"Invalid collection_method: must be one of {', '.join(COLLECTION_METHODS)}")
    if method == "send_invoice" and days_until_due is None and due_date is None:
        raise _error(
            400,
            "Invoices with `collection_method=send_invoice` require `days_until_due` or `due_date`.",
            param="days_until_due",
            code="parameter_missing",
        )
    if method == "charge_automatically" and (days_until_due is not None or due_date is not None):
        raise _error(
            400,
            "`days_until_due` and `due_date` can only be set on invoices with `collection_method=send_invoice`.",
            param="days_until_due" if days_until_due is not None else "due_date",
        )
    if days_until_due is not None and due_date is not None:
        raise _error(400, "You may only specify one of these parameters: days_until_due, due_date.")


def _check_number(number: str, invoice_id: str | None) -> None:
    """Invoice numbers are unique across the account (Stripe refuses a number in use)."""
    if not number.strip():
        raise _error(400, "Invalid invoice number: it cannot be blank.", param="number")
    for other in _objects(ls.Invoice):
        if other.id != invoice_id and other.number == number:
            raise _error(400, f"Invoice number {number!r} is already in use by another invoice.", param="number")


def _next_number(customer_id: str) -> str:
    """Customer-level numbering, Stripe's default in the US: ``<invoice_prefix>-0001``."""
    customer = ls.store.get(f"customer:{customer_id}")
    prefix = customer.invoice_prefix if customer is not None else "LOCAL"
    taken = {inv.number for inv in _objects(ls.Invoice)}
    sequence = customer.next_invoice_sequence if customer is not None else 1
    while f"{prefix}-{sequence:04d}" in taken:
        sequence += 1
    return f"{prefix}-{sequence:04d}"


def _payment_method(method_id: Any, param: str) -> Any:
    if not isinstance(method_id, str) or not method_id.startswith(("pm_", "card_", "src_")):
        raise _error(400, f"Invalid payment method: {method_id}", param=param)
    try:
        return ls.PaymentMethod._api_retrieve(method_id)
    except UserError:
        raise _error(404, f"No such PaymentMethod: '{method_id}'", code="resource_missing", param=param) from None


def _invoice_create(data: Data, _match: dict[str, str], _expand: list[str] | None) -> Any:
    _reject_unknown(data, INVOICE_CREATE_PARAMS)
    customer_id = data.get("customer")
    if not customer_id:
        raise _error(400, "Missing required param: customer.", param="customer", code="parameter_missing")
    customer = _retrieve(ls.Customer, customer_id, "customer", param="customer")
    method = _as_str(data, "collection_method") or "charge_automatically"
    days_until_due = _as_int(data, "days_until_due", minimum=0, maximum=36500)
    due_date = _as_int(data, "due_date")
    _check_collection(method, days_until_due, due_date)
    behavior = _as_str(data, "pending_invoice_items_behavior") or "exclude"
    if behavior not in ("exclude", "include"):
        raise _error(400, "Invalid pending_invoice_items_behavior: must be one of exclude, include", param="behavior")
    auto_advance = _as_bool(data, "auto_advance")
    number = _as_str(data, "number", max_length=INVOICE_NUMBER_MAX_LENGTH)
    if number is not None:
        _check_number(number, None)
    description = _as_str(data, "description")
    footer = _as_str(data, "footer")
    statement_descriptor = _as_str(data, "statement_descriptor", max_length=22)
    currency = _as_str(data, "currency")
    default_pm = data.get("default_payment_method")
    if default_pm is not None:
        default_pm = _payment_method(default_pm, "default_payment_method").id
    metadata = _metadata(data.get("metadata"))

    if data.get("subscription") is not None:
        # localstripe's own subscription invoice, kept as it was (its lines are the
        # subscription's items), with our settings applied on top.
        legacy: Data = {
            k: data[k]
            for k in ("customer", "subscription", "description", "tax_percent", "default_tax_rates")
            if k in data
        }
        invoice = ls.Invoice._api_create(**legacy)
    else:
        if "default_tax_rates" in data or "tax_percent" in data:
            raise _error(400, "Tax rates are not supported on standalone invoices by this fake.", param="tax_rates")
        invoice = _new_standalone_invoice(customer, currency=currency)
    invoice.collection_method = method
    invoice.days_until_due = days_until_due
    invoice.due_date = due_date if due_date is not None else _due_date(invoice.created, days_until_due)
    invoice.auto_advance = bool(auto_advance)
    invoice.number = number
    invoice.description = description
    invoice.footer = footer
    invoice.statement_descriptor = statement_descriptor
    invoice.default_payment_method = default_pm
    invoice.metadata = metadata

    if behavior == "include" and invoice.subscription is None:
        pending = [
            item
            for item in _objects(ls.InvoiceItem)
            if item.customer == customer.id and item.invoice is None and item.subscription is None
        ]
        if currency is None and pending:
            invoice.currency = pending[-1].currency
        for item in reversed(pending):  # oldest first, like the lines Stripe builds
            if item.currency == invoice.currency:
                _attach_item(invoice, item)

    if invoice.subscription is None:
        _emit("invoice.created", invoice)
    return invoice


def _due_date(created: int, days_until_due: int | None) -> int | None:
    return None if days_until_due is None else created + days_until_due * DAY


def _new_standalone_invoice(customer: Any, *, currency: str | None) -> Any:
    """A draft invoice with no lines, built field by field: localstripe's constructor
    would sweep the customer's pending items in (``pending_invoice_items_behavior`` is
    ``exclude`` by default since API version 2022-08-01)."""
    invoice = ls.Invoice.__new__(ls.Invoice)
    ls.StripeObject.__init__(invoice)
    invoice.customer = customer.id
    invoice.customer_email = customer.email
    invoice.customer_name = customer.name
    invoice.customer_phone = customer.phone
    invoice.customer_address = customer.address
    invoice.subscription = None
    invoice.tax_percent = None
    invoice.default_tax_rates = []
    invoice.date = invoice.created
    invoice.metadata = {}
    invoice.payment_intent = None
    invoice.application_fee = None
    invoice.attempt_count = 0
    invoice.attempted = False
    invoice.billing_reason = "manual"
    invoice.collection_method = "charge_automatically"
    invoice.description = None
    invoice.discount = None
    invoice.receipt_number = None
    invoice.starting_balance = customer.account_balance
    invoice.statement_descriptor = None
    invoice.webhooks_delivered_at = None
    invoice.status_transitions = dict(STATUS_TRANSITIONS)
    invoice.period_start = invoice.created
    invoice.period_end = invoice.created
    invoice.lines = ls.List(f"/v1/invoices/{invoice.id}/lines")
    invoice.currency = (currency or DEFAULT_CURRENCY).lower()
    invoice.ending_balance = None
    invoice._draft = True
    invoice._voided = False
    return invoice


def _invoice_retrieve(_data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    return _retrieve(ls.Invoice, match["id"], "invoice")


def _invoice_update(data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    invoice = _retrieve(ls.Invoice, match["id"], "invoice")
    _reject_unknown(data, INVOICE_UPDATE_PARAMS)
    status = invoice.status
    if status != "draft":
        for key in data:
            if key not in INVOICE_UPDATE_AFTER_FINALIZATION:
                raise _error(
                    400,
                    f"This invoice is {status}: `{key}` can only be updated on draft invoices.",
                    param=key,
                    code="invoice_not_editable",
                )
        if "auto_advance" in data and status != "open":
            raise _error(
                400,
                f"auto_advance can only be updated on draft or open invoices (this one is {status}).",
                param="auto_advance",
            )

    changes: Data = {}
    if "metadata" in data:
        changes["metadata"] = _metadata(data["metadata"], invoice.metadata)
    for key in ("description", "footer"):
        if key in data:
            changes[key] = _as_str(data, key) or None
    if "statement_descriptor" in data:
        changes["statement_descriptor"] = _as_str(data, "statement_descriptor", max_length=22) or None
    if "number" in data:
        number = _as_str(data, "number", max_length=INVOICE_NUMBER_MAX_LENGTH) or None
        if number is not None:
            _check_number(number, invoice.id)
        changes["number"] = number
    if "auto_advance" in data:
        changes["auto_advance"] = bool(_as_bool(data, "auto_advance"))
    if "default_payment_method" in data:
        pm_id = data["default_payment_method"]
        changes["default_payment_method"] = _payment_method(pm_id, "default_payment_method").id if pm_id else None
    if {"collection_method", "days_until_due", "due_date"} & set(data):
        method = _as_str(data, "collection_method") or invoice.collection_method
        days = _as_int(data, "days_until_due", minimum=0, maximum=36500)
        due = _as_int(data, "due_date")
        if method == "send_invoice" and days is None and due is None:
            # Switching to, or staying on, send_invoice keeps the terms already set.
            days = invoice.days_until_due
            due = invoice.due_date if days is None else None
        _check_collection(method, days, due)
        changes.update(
            collection_method=method,
            days_until_due=days,
            due_date=due if due is not None else _due_date(invoice.created, days),
        )

    previous: Data = {}
    for key, value in changes.items():
        old = getattr(invoice, key)
        if old != value:
            previous[key] = old
            setattr(invoice, key, value)
    if previous:
        _emit("invoice.updated", invoice, previous)
    return invoice


def _invoice_delete(_data: Data, match: dict[str, str], _expand: list[str] | None) -> Data:
    invoice = _retrieve(ls.Invoice, match["id"], "invoice")
    if invoice.status != "draft":
        raise _error(
            400, "You can only delete draft invoices; void a finalized one instead.", code="invoice_not_editable"
        )
    for line in invoice.lines._list:
        ls.store.pop(f"line_item:{line.id}", None)
        item_id = getattr(line, "invoice_item", None)
        if item_id:
            item = ls.store.pop(f"invoiceitem:{item_id}", None)
            if item is not None:
                _emit("invoiceitem.deleted", item)
    del ls.store[f"invoice:{invoice.id}"]
    _emit("invoice.deleted", invoice)
    return {"id": invoice.id, "object": "invoice", "deleted": True}


def _invoice_list(data: Data, _match: dict[str, str], expand: list[str] | None) -> Data:
    _reject_unknown(
        data,
        (
            "customer",
            "status",
            "subscription",
            "collection_method",
            "created",
            "due_date",
            "limit",
            "starting_after",
            "ending_before",
        ),
    )
    customer = _as_str(data, "customer")
    status = _as_str(data, "status")
    if status is not None and status not in INVOICE_STATUSES:
        raise _error(400, f"Invalid status: must be one of {', '.join(INVOICE_STATUSES)}", param="status")
    subscription = _as_str(data, "subscription")
    method = _as_str(data, "collection_method")
    if method is not None and method not in COLLECTION_METHODS:
        raise _error(400, "Invalid collection_method", param="collection_method")
    created = _created_filter(data.get("created"), "created")
    due = _created_filter(data.get("due_date"), "due_date")

    def matches(inv: Any) -> bool:
        return (
            (customer is None or inv.customer == customer)
            and (status is None or inv.status == status)
            and (subscription is None or inv.subscription == subscription)
            and (method is None or inv.collection_method == method)
            and created(inv.created)
            and (data.get("due_date") is None or (inv.due_date is not None and due(inv.due_date)))
        )

    return _page("/v1/invoices", [inv for inv in _objects(ls.Invoice) if matches(inv)], data, expand, "invoice")


def _invoice_lines(data: Data, match: dict[str, str], expand: list[str] | None) -> Data:
    invoice = _retrieve(ls.Invoice, match["id"], "invoice")
    _reject_unknown(data, ("limit", "starting_after", "ending_before"))
    return _page(f"/v1/invoices/{invoice.id}/lines", list(invoice.lines._list), data, expand, "line item")


def _finalize(invoice: Any, auto_advance: bool | None = None) -> Any:
    """draft → open: number assigned if none, a PaymentIntent for the amount due; a zero
    invoice is paid at once; ``auto_advance`` + ``charge_automatically`` → Stripe collects."""
    if invoice.status != "draft":
        raise _error(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.")
    if auto_advance is not None:
        invoice.auto_advance = auto_advance
    if invoice.number is None:
        invoice.number = _next_number(invoice.customer)
        invoice._auto_numbered = True
    else:
        _check_number(invoice.number, invoice.id)
    customer = ls.store.get(f"customer:{invoice.customer}")
    if customer is not None:
        invoice.customer_email = customer.email
        invoice.customer_name = customer.name
    invoice._draft = False
    stamp = _transition(invoice, "finalized_at")
    invoice.effective_at = stamp
    invoice.ending_balance = 0
    if invoice.collection_method == "send_invoice" and invoice.due_date is None:
        invoice.due_date = _due_date(stamp, invoice.days_until_due)
    if invoice.total > 0 and invoice.payment_intent is None:
        intent = ls.PaymentIntent(amount=invoice.total, currency=invoice.currency, customer=invoice.customer)
        intent.invoice = invoice.id
        intent.description = f"Invoice {invoice.number}"
        invoice.payment_intent = intent.id
    _emit("invoice.finalized", invoice)
    if invoice.total <= 0:
        invoice.auto_advance = False
        _transition(invoice, "paid_at")
        _emit("invoice.paid", invoice)
        _emit("invoice.payment_succeeded", invoice)
    elif invoice.auto_advance and invoice.collection_method == "charge_automatically":
        task = asyncio.ensure_future(_auto_collect(invoice.id))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return invoice


def _finalize_method(self: Any) -> None:
    """Replaces localstripe's Invoice._finalize (its subscription flow calls it)."""
    _finalize(self)


async def _auto_collect(invoice_id: str) -> None:
    await asyncio.sleep(AUTO_COLLECT_DELAY)
    # An automatic attempt is not caused by an API request: its events carry no request id.
    _request_id.set(None)
    _idempotency_key.set(None)
    invoice = ls.store.get(f"invoice:{invoice_id}")
    if invoice is None or invoice.status != "open" or not invoice.auto_advance:
        return
    try:
        _pay(invoice, raise_card_errors=False, automatic=True)
    except UserError:
        logger.exception("automatic collection of %s failed", invoice_id)
    ls.store.dump_to_disk()


def _pay(
    invoice: Any,
    *,
    paid_out_of_band: bool = False,
    payment_method: str | None = None,
    raise_card_errors: bool = True,
    automatic: bool = False,
) -> Any:
    status = invoice.status
    if status == "draft":
        _finalize(invoice)
        status = invoice.status
    if status == "paid":
        raise _error(400, "Invoice is already paid.")
    if status == "void":
        raise _error(400, "This invoice has been voided and can no longer be paid.")

    if paid_out_of_band:
        invoice._paid_out_of_band = True
        invoice.auto_advance = False
        _transition(invoice, "paid_at")
        intent = ls.store.get(f"payment_intent:{invoice.payment_intent}") if invoice.payment_intent else None
        if intent is not None and intent.status in ("requires_payment_method", "requires_confirmation"):
            intent._canceled = True
        _emit("invoice.paid", invoice)  # no invoice.payment_succeeded: no payment was made
        return invoice

    if payment_method is not None:
        source = _payment_method(payment_method, "payment_method")
    elif invoice.default_payment_method:
        source = ls.PaymentMethod._api_retrieve(invoice.default_payment_method)
    else:
        customer = _retrieve(ls.Customer, invoice.customer, "customer", param="customer")
        source = customer._get_default_payment_method_or_source()
    if source is None:
        if automatic:
            invoice.attempt_count += 1
            invoice.attempted = True
            _emit("invoice.payment_failed", invoice)
            return invoice
        raise _error(
            400,
            "This customer has no attached payment source or default payment method. "
            "Please consider adding a default payment method.",
        )

    intent = ls.store.get(f"payment_intent:{invoice.payment_intent}") if invoice.payment_intent else None
    if intent is None or intent.status == "canceled":
        intent = ls.PaymentIntent(amount=invoice.total, currency=invoice.currency, customer=invoice.customer)
        intent.invoice = invoice.id
        invoice.payment_intent = intent.id
    # One PaymentIntent per invoice, confirmed again for each attempt, as Stripe does.
    intent.payment_method = source.id
    intent.latest_charge = None
    intent.next_action = None
    intent._authentication_failed = False
    invoice.attempt_count += 1
    invoice.attempted = True
    intent._confirm(on_failure_now=lambda: None)

    if intent.status == "requires_action":
        if raise_card_errors:
            raise _error(
                402,
                "Payment for this invoice requires a payment method with additional authentication.",
                kind="card_error",
                code="invoice_payment_intent_requires_action",
                payment_intent=intent._export(),
            )
        return invoice
    charge = intent.latest_charge
    if charge is not None and charge.status == "failed":
        _emit("payment_intent.payment_failed", intent)
        _emit("invoice.payment_failed", invoice)
        if raise_card_errors:
            raise _error(
                402,
                charge.failure_message or "Your card was declined.",
                kind="card_error",
                code=charge.failure_code or "card_declined",
                decline_code="generic_decline",
                charge=charge.id,
                payment_intent=intent._export(),
            )
    return invoice


def _api_pay_invoice(cls: Any, invoice_id: str) -> Any:
    """Replaces localstripe's Invoice._api_pay_invoice, which its subscription flow calls:
    there a declined card leaves the subscription incomplete instead of raising."""
    return _pay(_retrieve(ls.Invoice, invoice_id, "invoice"), raise_card_errors=False)


def _on_payment_success(self: Any) -> None:
    """Replaces localstripe's hook, called when the invoice's PaymentIntent succeeds."""
    self.auto_advance = False
    _transition(self, "paid_at")
    _emit("invoice.paid", self)
    _emit("invoice.payment_succeeded", self)
    if self.subscription:
        ls.Subscription._api_retrieve(self.subscription)._on_initial_payment_success(self)


def _invoice_finalize(data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    _reject_unknown(data, ("auto_advance",))
    return _finalize(_retrieve(ls.Invoice, match["id"], "invoice"), _as_bool(data, "auto_advance"))


def _invoice_pay(data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    _reject_unknown(data, ("paid_out_of_band", "payment_method", "source", "off_session", "forgive", "mandate"))
    invoice = _retrieve(ls.Invoice, match["id"], "invoice")
    _as_bool(data, "off_session")
    _as_bool(data, "forgive")
    method = data.get("payment_method") or data.get("source")
    return _pay(invoice, paid_out_of_band=bool(_as_bool(data, "paid_out_of_band")), payment_method=method)


def _invoice_send(data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    _reject_unknown(data, ())
    invoice = _retrieve(ls.Invoice, match["id"], "invoice")
    if invoice.collection_method != "send_invoice":
        raise _error(400, "You can only manually send an invoice if its collection method is 'send_invoice'.")
    if invoice.status == "draft":
        _finalize(invoice)
    if invoice.status == "void":
        raise _error(400, "You can't send a void invoice.")
    # Test mode sends no e-mail, but records invoice.sent, like Stripe's test mode.
    _emit("invoice.sent", invoice)
    return invoice


def _invoice_void(data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    _reject_unknown(data, ())
    invoice = _retrieve(ls.Invoice, match["id"], "invoice")
    status = invoice.status
    if status not in ("open", "uncollectible"):
        raise _error(400, f"You can only void open or uncollectible invoices; this one is {status}.")
    intent = ls.store.get(f"payment_intent:{invoice.payment_intent}") if invoice.payment_intent else None
    if intent is not None and intent.status in (
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "requires_capture",
    ):
        intent._canceled = True
        intent.next_action = None
    invoice._voided = True
    invoice.auto_advance = False
    _transition(invoice, "voided_at")
    _emit("invoice.voided", invoice)
    if invoice.subscription:
        ls.Subscription._api_retrieve(invoice.subscription)._on_initial_payment_voided(invoice)
    return invoice


def _invoice_mark_uncollectible(data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    _reject_unknown(data, ())
    invoice = _retrieve(ls.Invoice, match["id"], "invoice")
    status = invoice.status
    if status != "open":
        raise _error(400, f"You can only mark open invoices as uncollectible; this one is {status}.")
    invoice._uncollectible = True
    invoice.auto_advance = False
    _transition(invoice, "marked_uncollectible_at")
    _emit("invoice.marked_uncollectible", invoice)
    return invoice
