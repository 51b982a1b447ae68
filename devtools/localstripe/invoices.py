"""localstripe, extended in-process with the parts of Stripe our billing uses.

Run as ``python -m billing.localstripe_ext --port N [--from-scratch]`` (the flags of
``localstripe``). It imports localstripe 1.15.10, patches its resources, builds an aiohttp
application with our routes in front of localstripe's own, and serves it on 127.0.0.1 only.

What is added (docs/stripe-localstripe.md lists each addition with what real Stripe does
and where we differ):

- standalone invoices (a customer without a subscription): create, update, delete, list
  with filters and pagination, finalize, send, pay (card or ``paid_out_of_band``), void,
  mark uncollectible, automatic collection when ``auto_advance`` is true;
- invoice items attached to a draft invoice, priced ``quantity`` × unit amount;
- idempotency-key replay on every POST, scoped per API key;
- ``GET /v1/account``, Stripe-style errors, a ``Request-Id`` header on every answer;
- the fields dj-stripe 2.11 reads (``discounts``, ``subscription``/``price`` on
  subscription items, …) and ``invoice.*`` events, delivered through localstripe's
  signed webhooks;
- the pickled store kept in the system temp folder (``TMPDIR``), written atomically:
  localstripe itself hard-codes ``/tmp/localstripe.pickle``.

Nothing here is imported by the Django project; tests start it as a subprocess
(billing/tests/localstripe_server.py) and reach it over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import hashlib
import json
import logging
import os
import pickle
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from localstripe import resources as ls
from localstripe import server, webhooks
from localstripe.errors import UserError

HOST = "127.0.0.1"
DEFAULT_PORT = 8420
# Stamped on events when the request that caused them sent no Stripe-Version header
# (stripe-python 15.6.2 sends this one by default).
DEFAULT_API_VERSION = "2026-08-26.dahlia"
DEFAULT_CURRENCY = "usd"
ACCOUNT_ID = "acct_1LocalStripeTest0"
ACCOUNT_NAME = "Local Stripe test account"
ACCOUNT_CREATED = 1_700_000_000
DAY = 86_400
IDEMPOTENCY_TTL = 24 * 3600  # Stripe keeps keys at least 24 hours
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_PREFIX = "_idempotency:"  # store keys; never starts like "<object>:"
AUTO_COLLECT_DELAY = 1.0  # seconds between finalization and the automatic payment attempt
INVOICE_NUMBER_MAX_LENGTH = 26
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX_LENGTH = 40
METADATA_VALUE_MAX_LENGTH = 500
LIST_LIMIT_MAX = 100

Data = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Endpoint = Callable[[Data, dict[str, str], list[str] | None], Any]

logger = logging.getLogger("localstripe_ext")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_idempotency_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("idempotency_key", default=None)
_stripe_version: contextvars.ContextVar[str | None] = contextvars.ContextVar("stripe_version", default=None)
_in_flight: set[str] = set()
_background: set[asyncio.Future[None]] = set()
_loading_store = False
_installed = False


# --------------------------------------------------------------------------------------
# Errors and parameters
# --------------------------------------------------------------------------------------


def _error(status: int, message: str, *, kind: str = "invalid_request_error", **fields: Any) -> Exception:
    """A Stripe-shaped error: ``{"error": {"type", "message", "code"?, "param"?, …}}``."""
    err: Exception = UserError(status, message, {k: v for k, v in fields.items() if v is not None})
    err.body["error"]["type"] = kind  # type: ignore[attr-defined]
    return err


def _reject_unknown(data: Data, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for key in data:
        if key not in known:
            raise _error(400, f"Received unknown parameter: {key}", param=key, code="parameter_unknown")


def _as_bool(data: Data, key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _error(400, f"Invalid boolean: {value}", param=key)


def _as_int(data: Data, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _error(400, f"Invalid integer: {value}", param=key, code="parameter_invalid_integer")
    try:
        number = int(value)
    except ValueError:
        raise _error(400, f"Invalid integer: {value}", param=key, code="parameter_invalid_integer") from None
    if minimum is not None and number < minimum:
        raise _error(400, f"This value must be greater than or equal to {minimum}.", param=key)
    if maximum is not None and number > maximum:
        raise _error(400, f"This value must be less than or equal to {maximum}.", param=key)
    return number


def _as_decimal(value: Any, key: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _error(400, f"Invalid decimal: {value}", param=key) from None
    if not number.is_finite():
        raise _error(400, f"Invalid decimal: {value}", param=key)
    return number


def _as_str(data: Data, key: str, *, max_length: int | None = None) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _error(400, f"Invalid string: {value}", param=key)
    if max_length is not None and len(value) > max_length:
        raise _error(400, f"Invalid string: must be at most {max_length} characters long", param=key)
    return value


def _metadata(value: Any, current: dict[str, str] | None = None) -> dict[str, str]:
    """Stripe's metadata update: merge keys, an empty value unsets a key, ``""`` unsets all."""
    result = dict(current or {})
    if value is None:
        return result
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _error(400, "Invalid object", param="metadata")
    for key, item in value.items():
        if item == "" or item is None:
            result.pop(key, None)
            continue
        if len(key) > METADATA_KEY_MAX_LENGTH:
            raise _error(400, f"Metadata keys can have up to {METADATA_KEY_MAX_LENGTH} characters.", param="metadata")
        if len(str(item)) > METADATA_VALUE_MAX_LENGTH:
            raise _error(
                400, f"Metadata values can have up to {METADATA_VALUE_MAX_LENGTH} characters.", param="metadata"
            )
        result[key] = str(item)
    if len(result) > METADATA_MAX_KEYS:
        raise _error(400, f"Metadata can have up to {METADATA_MAX_KEYS} keys.", param="metadata")
    return result


def _retrieve(cls: Any, object_id: Any, noun: str, *, param: str = "id") -> Any:
    obj = ls.store.get(f"{cls.object}:{object_id}") if isinstance(object_id, str) else None
    if obj is None:
        raise _error(404, f"No such {noun}: '{object_id}'", code="resource_missing", param=param)
    return obj


def _now() -> int:
    return int(time.time())


def _objects(cls: Any) -> list[Any]:
    """Every stored object of a class, newest first (Stripe's list order)."""
    prefix = cls.object + ":"
    items = [value for key, value in ls.store.items() if key.startswith(prefix)]
    items.reverse()  # insertion order breaks ties between objects created in the same second
    items.sort(key=lambda obj: obj.created, reverse=True)
    return items


def _created_filter(value: Any, param: str) -> Callable[[int], bool]:
    """``created=<int>`` or ``created[gt|gte|lt|lte]=<int>``."""
    if value is None:
        return lambda _stamp: True
    if isinstance(value, dict):
        bounds: dict[str, int] = {}
        for op, raw in value.items():
            if op not in OPERATORS:
                raise _error(400, f"Received unknown parameter: {param}[{op}]", code="parameter_unknown")
            bound = _as_int({f"{param}[{op}]": raw}, f"{param}[{op}]")
            assert bound is not None
            bounds[op] = bound
        return lambda stamp: all(OPERATORS[op](stamp, bound) for op, bound in bounds.items())
    exact = _as_int({param: value}, param)
    return lambda stamp: stamp == exact


OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _page(url: str, items: list[Any], data: Data, expand: list[str] | None, noun: str) -> Data:
    """One page of a Stripe list: ``limit`` (1–100, default 10), ``starting_after``, ``ending_before``."""
    limit = _as_int(data, "limit", minimum=1, maximum=LIST_LIMIT_MAX) or 10
    starting_after = data.get("starting_after")
    ending_before = data.get("ending_before")
    if starting_after and ending_before:
        raise _error(400, "You may only specify one of these parameters: ending_before, starting_after.")
    ids = [obj.id for obj in items]
    if starting_after:
        if starting_after not in ids:
            raise _error(404, f"No such {noun}: '{starting_after}'", code="resource_missing", param="starting_after")
        window = items[ids.index(starting_after) + 1 :]
        page, has_more = window[:limit], len(window) > limit
    elif ending_before:
        if ending_before not in ids:
            raise _error(404, f"No such {noun}: '{ending_before}'", code="resource_missing", param="ending_before")
        window = items[: ids.index(ending_before)]
        page, has_more = window[-limit:], len(window) > limit
    else:
        page, has_more = items[:limit], len(items) > limit
    item_expand = [path[len("data.") :] for path in expand or [] if path.startswith("data.")]
    return {
        "object": "list",
        "url": url,
        "has_more": has_more,
        "data": [obj._export(expand=item_expand) for obj in page],
    }


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------

_original_event_init = ls.Event.__init__


def _event_init(self: Any, type_: str, data: Any) -> None:
    """localstripe's Event, plus ``request``, ``pending_webhooks`` and our API version."""
    _original_event_init(self, type_, data)
    self.api_version = _stripe_version.get() or DEFAULT_API_VERSION
    self.request = {"id": _request_id.get(), "idempotency_key": _idempotency_key.get()}
    self.pending_webhooks = sum(
        1 for hook in webhooks._webhooks.values() if hook.events is None or type_ in hook.events
    )


def _emit(type_: str, obj: Any, previous: Data | None = None) -> Any:
    """Record an event (snapshot of ``obj`` now) and deliver it to the registered webhooks."""
    event = ls.Event(type_, obj)
    if previous:
        event.data["previous_attributes"] = previous
    ls.schedule_webhook(event)
    return event


def _events_list(data: Data, _match: dict[str, str], expand: list[str] | None) -> Data:
    _reject_unknown(data, ("type", "types", "created", "limit", "starting_after", "ending_before", "delivery_success"))
    wanted_type = _as_str(data, "type")
    types = data.get("types")
    if types is not None and not isinstance(types, list):
        raise _error(400, "Invalid array", param="types")
    if wanted_type and types:
        raise _error(400, "You may only specify one of these parameters: type, types.")
    created = _created_filter(data.get("created"), "created")

    def matches(event: Any) -> bool:
        if wanted_type and not _type_matches(event.type, wanted_type):
            return False
        if types and not any(_type_matches(event.type, t) for t in types):
            return False
        return created(event.created)

    return _page("/v1/events", [e for e in _objects(ls.Event) if matches(e)], data, expand, "event")


def _type_matches(event_type: str, pattern: str) -> bool:
    """Stripe's ``type`` filter accepts ``*`` as a wildcard (``invoice.*``)."""
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern


# --------------------------------------------------------------------------------------
# Customers, subscription items, charges, payment intents: fields dj-stripe reads
# --------------------------------------------------------------------------------------


def _customer_invoice_prefix(self: Any) -> str:
    prefix = self.__dict__.get("_invoice_prefix")
    if prefix:
        return str(prefix)
    return hashlib.sha256(self.id.encode()).hexdigest()[:8].upper()


def _customer_set_invoice_prefix(self: Any, value: Any) -> None:
    if not isinstance(value, str) or not (3 <= len(value) <= 12) or not value.isalnum() or not value.isupper():
        raise _error(400, "Invalid invoice_prefix: 3 to 12 uppercase letters or digits.", param="invoice_prefix")
    self._invoice_prefix = value


def _customer_next_invoice_sequence(self: Any) -> int:
    return 1 + sum(
        1 for inv in _objects(ls.Invoice) if inv.customer == self.id and getattr(inv, "_auto_numbered", False)
    )


def _price_of_plan(plan: Any) -> Data:
    """A legacy localstripe Plan shown as the Price object current Stripe versions return."""
    amount = plan.amount
    return {
        "id": plan.id,
        "object": "price",
        "active": plan.active,
        "billing_scheme": plan.billing_scheme,
        "created": plan.created,
        "currency": plan.currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": dict(plan.metadata or {}),
        "nickname": plan.nickname,
        "product": plan.product,
        "recurring": {
            "interval": plan.interval,
            "interval_count": plan.interval_count,
            "meter": None,
            "trial_period_days": plan.trial_period_days,
            "usage_type": plan.usage_type,
        },
        "tax_behavior": "unspecified",
        "tiers_mode": plan.tiers_mode,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": None if amount is None else str(amount),
    }


_original_subscription_init = ls.Subscription.__init__


def _subscription_init(self: Any, *args: Any, **kwargs: Any) -> None:
    """localstripe's Subscription; ``default_tax_rates`` is a list, as in Stripe (dj-stripe
    iterates it), unless the legacy ``tax_percent`` is used (localstripe needs None then)."""
    _original_subscription_init(self, *args, **kwargs)
    if self.default_tax_rates is None and self.tax_percent is None:
        self.default_tax_rates = []


def _product_features(data: Data, match: dict[str, str], expand: list[str] | None) -> Data:
    """Product features (entitlements): none here, but the list exists (dj-stripe reads it)."""
    product = _retrieve(ls.Product, match["id"], "product")
    _reject_unknown(data, ("limit", "starting_after", "ending_before"))
    return _page(f"/v1/products/{product.id}/features", [], data, expand, "product feature")


def _charge_amount_captured(self: Any) -> int:
    return int(self.amount) if self.captured and self.status == "succeeded" else 0


def _charge_payment_method_details(self: Any) -> Data | None:
    pm = ls.store.get(f"payment_method:{self.payment_method}") if self.payment_method else None
    if pm is None or getattr(pm, "type", None) != "card":
        return None
    card = pm.card
    return {
        "type": "card",
        "card": {
            "brand": card.get("brand"),
            "country": card.get("country"),
            "exp_month": card.get("exp_month"),
            "exp_year": card.get("exp_year"),
            "fingerprint": card.get("fingerprint"),
            "funding": card.get("funding"),
            "last4": card.get("last4"),
            "network": card.get("brand"),
        },
    }


def _charge_outcome(self: Any) -> Data | None:
    if self.status == "succeeded":
        return {"network_status": "approved_by_network", "reason": None, "risk_level": "normal", "type": "authorized"}
    if self.status == "failed":
        return {"network_status": "declined_by_network", "reason": "generic_decline", "type": "issuer_declined"}
    return None


def _intent_amount_received(self: Any) -> int:
    return int(self.amount) if self.status == "succeeded" else 0


def _intent_create_charge(self: Any, on_failure_now: Callable[[], None]) -> None:
    """localstripe's PaymentIntent._create_charge, with ``charge.invoice`` set like Stripe's."""
    if self.status != "requires_confirmation":
        raise UserError(400, "Bad request")
    charge = ls.Charge(
        amount=self.amount,
        currency=self.currency,
        customer=self.customer,
        source=self.payment_method,
        capture=(self.capture_method != "manual"),
    )
    charge.payment_intent = self.id
    charge.invoice = self.invoice
    self.latest_charge = charge
    charge._initialize_charge(self._on_success, on_failure_now, self._report_async_failure)


# --------------------------------------------------------------------------------------
# Invoices
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Invoice items
# --------------------------------------------------------------------------------------

INVOICE_ITEM_CREATE_PARAMS = (
    "customer",
    "invoice",
    "amount",
    "currency",
    "description",
    "metadata",
    "quantity",
    "unit_amount",
    "unit_amount_decimal",
    "price_data",
    "period",
    "discountable",
    "subscription",
)
INVOICE_ITEM_UPDATE_PARAMS = (
    "amount",
    "description",
    "metadata",
    "quantity",
    "unit_amount",
    "unit_amount_decimal",
    "price_data",
    "period",
    "discountable",
)
INVOICE_ITEM_DEFAULTS: Data = {
    "discountable": True,
    "discounts": (),
    "price": None,
    "test_clock": None,
    "unit_amount": None,
    "unit_amount_decimal": None,
}
LINE_ITEM_DEFAULTS: Data = {
    "discountable": True,
    "discounts": (),
    "discount_amounts": (),
    "price": None,
    "pretax_credit_amounts": (),
}


def _pricing(data: Data, *, required: bool) -> tuple[int, int | None, Decimal | None] | None:
    """(amount, quantity, unit amount) from ``amount`` | ``unit_amount(_decimal)`` | ``price_data``."""
    price_data = data.get("price_data")
    unit_sources = [k for k in ("amount", "unit_amount", "unit_amount_decimal", "price_data") if k in data]
    if len(unit_sources) > 1:
        raise _error(400, f"You may only specify one of these parameters: {', '.join(unit_sources)}.")
    quantity = _as_int(data, "quantity", minimum=0)
    if not unit_sources:
        if required:
            raise _error(
                400, "You must specify either `amount`, `unit_amount_decimal` or `price_data`.", param="amount"
            )
        return None
    if "amount" in data:
        if quantity not in (None, 1):
            raise _error(400, "`quantity` cannot be combined with `amount`; use `unit_amount_decimal`.")
        amount = _as_int(data, "amount")
        assert amount is not None
        return amount, 1, Decimal(amount)
    if price_data is not None:
        if not isinstance(price_data, dict):
            raise _error(400, "Invalid object", param="price_data")
        _reject_unknown(
            {f"price_data[{k}]": v for k, v in price_data.items()},
            (f"price_data[{k}]" for k in ("currency", "product", "unit_amount", "unit_amount_decimal", "tax_behavior")),
        )
        if "product" not in price_data:
            raise _error(400, "Missing required param: price_data[product].", code="parameter_missing")
        _retrieve(ls.Product, price_data["product"], "product", param="price_data[product]")
        name = "unit_amount" if "unit_amount" in price_data else "unit_amount_decimal"
        if name not in price_data:
            raise _error(400, "Missing required param: price_data[unit_amount].", code="parameter_missing")
        key, raw = f"price_data[{name}]", price_data[name]
    else:
        name = "unit_amount" if "unit_amount" in data else "unit_amount_decimal"
        key, raw = name, data[name]
    unit = Decimal(_as_int({key: raw}, key) or 0) if name == "unit_amount" else _as_decimal(raw, key)
    count = 1 if quantity is None else quantity
    amount = int((unit * count).to_integral_value(rounding=ROUND_HALF_UP))
    return amount, count, unit


def _period(data: Data) -> tuple[int | None, int | None]:
    period = data.get("period")
    if period is None:
        return None, None
    if not isinstance(period, dict) or set(period) != {"start", "end"}:
        raise _error(400, "Invalid period: give period[start] and period[end].", param="period")
    start = _as_int(period, "start")
    end = _as_int(period, "end")
    assert start is not None and end is not None
    if end < start:
        raise _error(400, "The period end must be greater than or equal to the start.", param="period[end]")
    return start, end


def _set_pricing(item: Any, amount: int, quantity: int | None, unit: Decimal | None) -> None:
    item.amount = amount
    item.quantity = 1 if quantity is None else quantity
    item.unit_amount_decimal = None if unit is None else format(unit.normalize(), "f")
    item.unit_amount = int(unit) if unit is not None and unit == unit.to_integral_value() else None


def _attach_item(invoice: Any, item: Any) -> None:
    item.invoice = invoice.id
    invoice.lines._list.append(ls.InvoiceLineItem(item))


def _draft_invoice_for_item(invoice_id: Any) -> Any:
    invoice = _retrieve(ls.Invoice, invoice_id, "invoice", param="invoice")
    if invoice.status != "draft":
        raise _error(
            400,
            f"Invoice {invoice.id} is {invoice.status}: invoice items can only be added to or changed on "
            "draft invoices.",
            param="invoice",
            code="invoice_not_editable",
        )
    return invoice


def _invoice_item_create(data: Data, _match: dict[str, str], _expand: list[str] | None) -> Any:
    _reject_unknown(data, INVOICE_ITEM_CREATE_PARAMS)
    invoice = _draft_invoice_for_item(data["invoice"]) if data.get("invoice") else None
    customer_id = data.get("customer") or (invoice.customer if invoice is not None else None)
    if not customer_id:
        raise _error(400, "Missing required param: customer.", param="customer", code="parameter_missing")
    _retrieve(ls.Customer, customer_id, "customer", param="customer")
    if invoice is not None and invoice.customer != customer_id:
        raise _error(400, f"Invoice {invoice.id} belongs to another customer.", param="invoice")
    pricing = _pricing(data, required=True)
    assert pricing is not None
    amount, quantity, unit = pricing
    price_data = data.get("price_data")
    price_currency = price_data.get("currency") if isinstance(price_data, dict) else None
    currency = (_as_str(data, "currency") or price_currency or "").lower() or None
    if currency is None:
        if invoice is None:
            raise _error(400, "Missing required param: currency.", param="currency", code="parameter_missing")
        currency = invoice.currency
    if invoice is not None and currency != invoice.currency:
        raise _error(
            400,
            f"The currency of the invoice item ({currency}) must match the invoice's ({invoice.currency}).",
            param="currency",
        )
    start, end = _period(data)
    discountable = _as_bool(data, "discountable")
    item = ls.InvoiceItem(
        amount=amount,
        currency=currency,
        customer=customer_id,
        description=_as_str(data, "description"),
        metadata=_metadata(data.get("metadata")),
        period_start=start,
        period_end=end,
        subscription=data.get("subscription"),
    )
    _set_pricing(item, amount, quantity, unit)
    item.discountable = amount >= 0 if discountable is None else discountable
    if invoice is not None:
        _attach_item(invoice, item)
    _emit("invoiceitem.created", item)
    return item


def _invoice_item_retrieve(_data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    return _retrieve(ls.InvoiceItem, match["id"], "invoiceitem")


def _invoice_item_update(data: Data, match: dict[str, str], _expand: list[str] | None) -> Any:
    item = _retrieve(ls.InvoiceItem, match["id"], "invoiceitem")
    _reject_unknown(data, INVOICE_ITEM_UPDATE_PARAMS)
    invoice = _draft_invoice_for_item(item.invoice) if item.invoice else None
    pricing = _pricing(data, required=False)
    if pricing is not None:
        _set_pricing(item, *pricing)
    elif "quantity" in data:
        quantity = _as_int(data, "quantity", minimum=0)
        unit = Decimal(item.unit_amount_decimal) if item.unit_amount_decimal is not None else Decimal(item.amount)
        amount = int((unit * (quantity or 0)).to_integral_value(rounding=ROUND_HALF_UP))
        _set_pricing(item, amount, quantity, unit)
    if "description" in data:
        item.description = _as_str(data, "description") or "Invoice item"
    if "metadata" in data:
        item.metadata = _metadata(data["metadata"], item.metadata)
    if "period" in data:
        start, end = _period(data)
        item.period = {"start": start, "end": end}
    if "discountable" in data:
        item.discountable = bool(_as_bool(data, "discountable"))
    if invoice is not None:
        lines = invoice.lines._list
        for index, line in enumerate(lines):
            if getattr(line, "invoice_item", None) == item.id:
                ls.store.pop(f"line_item:{line.id}", None)
                lines[index] = ls.InvoiceLineItem(item)
    return item


def _invoice_item_delete(_data: Data, match: dict[str, str], _expand: list[str] | None) -> Data:
    item = _retrieve(ls.InvoiceItem, match["id"], "invoiceitem")
    if item.invoice:
        invoice = _draft_invoice_for_item(item.invoice)
        for line in [line for line in invoice.lines._list if getattr(line, "invoice_item", None) == item.id]:
            invoice.lines._list.remove(line)
            ls.store.pop(f"line_item:{line.id}", None)
    del ls.store[f"invoiceitem:{item.id}"]
    _emit("invoiceitem.deleted", item)
    return {"id": item.id, "object": "invoiceitem", "deleted": True}


def _invoice_item_list(data: Data, _match: dict[str, str], expand: list[str] | None) -> Data:
    _reject_unknown(data, ("customer", "invoice", "pending", "created", "limit", "starting_after", "ending_before"))
    customer = _as_str(data, "customer")
    invoice = _as_str(data, "invoice")
    pending = _as_bool(data, "pending")
    created = _created_filter(data.get("created"), "created")

    def matches(item: Any) -> bool:
        return (
            (customer is None or item.customer == customer)
            and (invoice is None or item.invoice == invoice)
            and (pending is None or (item.invoice is None) == pending)
            and created(item.created)
        )

    return _page("/v1/invoiceitems", [i for i in _objects(ls.InvoiceItem) if matches(i)], data, expand, "invoiceitem")


def _line_unit_amount_excluding_tax(self: Any) -> str | None:
    if self.type == "invoiceitem":
        item = ls.store.get(f"invoiceitem:{self.invoice_item}")
        if item is not None and item.unit_amount_decimal is not None:
            return str(item.unit_amount_decimal)
    if self.quantity:
        return format((Decimal(self.amount) / Decimal(self.quantity)).normalize(), "f")
    return None


def _line_parent(self: Any) -> Data:
    if self.type == "invoiceitem":
        return {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": self.invoice_item,
                "proration": self.proration,
                "proration_details": {"credited_items": None},
                "subscription": self.subscription,
            },
            "subscription_item_details": None,
        }
    return {
        "type": "subscription_item_details",
        "invoice_item_details": None,
        "subscription_item_details": {
            "invoice_item": None,
            "proration": self.proration,
            "proration_details": {"credited_items": None},
            "subscription": self.subscription,
            "subscription_item": getattr(self, "subscription_item", None),
        },
    }


def _line_pricing(self: Any) -> Data:
    return {"type": None, "price_details": None, "unit_amount_decimal": self.unit_amount_excluding_tax}


# --------------------------------------------------------------------------------------
# Account
# --------------------------------------------------------------------------------------


def account_object() -> Data:
    """A fixed, fully onboarded US test account (``GET /v1/account``)."""
    requirements: Data = {
        "alternatives": [],
        "current_deadline": None,
        "currently_due": [],
        "disabled_reason": None,
        "errors": [],
        "eventually_due": [],
        "past_due": [],
        "pending_verification": [],
    }
    return {
        "id": ACCOUNT_ID,
        "object": "account",
        "business_profile": {
            "mcc": None,
            "name": ACCOUNT_NAME,
            "product_description": None,
            "support_address": None,
            "support_email": None,
            "support_phone": None,
            "support_url": None,
            "url": None,
        },
        "business_type": "company",
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": True,
        "controller": {"type": "account"},
        "country": "US",
        "created": ACCOUNT_CREATED,
        "default_currency": DEFAULT_CURRENCY,
        "details_submitted": True,
        "email": None,
        "external_accounts": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/accounts/{ACCOUNT_ID}/external_accounts",
        },
        "future_requirements": requirements,
        "livemode": False,
        "metadata": {},
        "payouts_enabled": True,
        "requirements": requirements,
        "settings": {
            "bacs_debit_payments": {"display_name": None, "service_user_number": None},
            "branding": {"icon": None, "logo": None, "primary_color": None, "secondary_color": None},
            "card_issuing": {"tos_acceptance": {"date": None, "ip": None}},
            "card_payments": {
                "decline_on": {"avs_failure": False, "cvc_failure": False},
                "statement_descriptor_prefix": None,
                "statement_descriptor_prefix_kana": None,
                "statement_descriptor_prefix_kanji": None,
            },
            "dashboard": {"display_name": ACCOUNT_NAME, "timezone": "Etc/UTC"},
            "invoices": {"default_account_tax_ids": None, "hosted_payment_method_save": "offer"},
            "payments": {
                "statement_descriptor": "LOCALSTRIPE",
                "statement_descriptor_kana": None,
                "statement_descriptor_kanji": None,
            },
            "payouts": {
                "debit_negative_balances": True,
                "schedule": {"delay_days": 2, "interval": "daily"},
                "statement_descriptor": None,
            },
        },
        "tos_acceptance": {"date": ACCOUNT_CREATED},
        "type": "standard",
    }


def _account(_data: Data, _match: dict[str, str], _expand: list[str] | None) -> Data:
    return account_object()


def _checkout_session_create(data: Data, _match: dict[str, str], _expand: list[str] | None) -> Data:
    """A Checkout Session in `setup` mode (Stripe-hosted page to save a payment method).

    Only what our gateway uses: no page is served; `url` points at this server."""
    mode = data.get("mode")
    if mode != "setup":
        raise _error(400, "Only mode=setup is supported by this test server.", param="mode")
    customer = data.get("customer")
    if not customer:
        raise _error(400, "Missing required param: customer.", param="customer")
    ls.Customer._api_retrieve(customer)  # 404 like Stripe for an unknown customer
    for param in ("success_url", "cancel_url"):
        if not data.get(param):
            raise _error(400, f"Missing required param: {param}.", param=param)
    session_id = "cs_test_" + secrets.token_hex(12)
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": "setup",
        "customer": customer,
        "status": "open",
        "success_url": data["success_url"],
        "cancel_url": data["cancel_url"],
        "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        "currency": data.get("currency"),
        "payment_method_types": data.get("payment_method_types") or ["card"],
        "metadata": data.get("metadata") or {},
        "livemode": False,
        "created": int(time.time()),
    }


def _account_by_id(_data: Data, match: dict[str, str], _expand: list[str] | None) -> Data:
    if match["id"] != ACCOUNT_ID:
        raise _error(404, f"No such account: '{match['id']}'", code="resource_missing", param="id")
    return account_object()


# --------------------------------------------------------------------------------------
# HTTP: handlers, middlewares, application
# --------------------------------------------------------------------------------------


def _endpoint(fn: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            posted = await server.get_post_data(request)
            data: Data = dict(posted) if posted else {}
            query = server.unflatten_data(request.query)
            data.update(query or {})
        else:
            data = dict(server.unflatten_data(request.query) or {})
        expand = data.pop("expand", None)
        if expand is not None and not isinstance(expand, list):
            raise _error(400, "Invalid array", param="expand")
        result = fn(data, dict(request.match_info), expand)
        body = result._export(expand=expand) if hasattr(result, "_export") else result
        return server.json_response(body)

    return handle


ROUTES: tuple[tuple[str, str, Endpoint], ...] = (
    ("GET", "/v1/account", _account),
    ("POST", "/v1/checkout/sessions", _checkout_session_create),
    ("GET", "/v1/accounts/{id}", _account_by_id),
    ("GET", "/v1/events", _events_list),
    ("GET", "/v1/products/{id}/features", _product_features),
    ("POST", "/v1/invoices", _invoice_create),
    ("GET", "/v1/invoices", _invoice_list),
    ("GET", "/v1/invoices/{id}", _invoice_retrieve),
    ("POST", "/v1/invoices/{id}", _invoice_update),
    ("DELETE", "/v1/invoices/{id}", _invoice_delete),
    ("GET", "/v1/invoices/{id}/lines", _invoice_lines),
    ("POST", "/v1/invoices/{id}/finalize", _invoice_finalize),
    ("POST", "/v1/invoices/{id}/pay", _invoice_pay),
    ("POST", "/v1/invoices/{id}/send", _invoice_send),
    ("POST", "/v1/invoices/{id}/void", _invoice_void),
    ("POST", "/v1/invoices/{id}/mark_uncollectible", _invoice_mark_uncollectible),
    ("POST", "/v1/invoiceitems", _invoice_item_create),
    ("GET", "/v1/invoiceitems", _invoice_item_list),
    ("GET", "/v1/invoiceitems/{id}", _invoice_item_retrieve),
    ("POST", "/v1/invoiceitems/{id}", _invoice_item_update),
    ("DELETE", "/v1/invoiceitems/{id}", _invoice_item_delete),
)


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A ``Request-Id`` on every answer, the request's context for the events it causes,
    and Stripe's JSON error for an unknown URL."""
    request_id = "req_" + secrets.token_hex(7)
    _request_id.set(request_id)
    _idempotency_key.set(request.headers.get("Idempotency-Key"))
    _stripe_version.set(request.headers.get("Stripe-Version"))
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = server.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL ({request.method}: {request.path}).",
                }
            },
            status=404,
        )
    except web.HTTPMethodNotAllowed:
        response = server.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL ({request.method}: {request.path}).",
                }
            },
            status=405,
        )
    response.headers["Request-Id"] = request_id
    return response


def _fingerprint(request: web.Request, body: bytes) -> str:
    """The request's parameters, independent of their order."""
    canonical: Any
    if request.content_type == "application/json" and body:
        try:
            canonical = json.loads(body)
        except ValueError:
            canonical = body.decode("utf-8", "replace")
    else:
        canonical = sorted(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    query = sorted(request.query.items())
    text = json.dumps([request.method, request.path, canonical, query], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _idempotency_error(status: int, message: str, **fields: Any) -> web.Response:
    error = {"type": "idempotency_error", "message": message, **fields}
    return server.json_response({"error": error}, status=status)


def _purge_idempotency(now: float) -> None:
    expired = [
        key
        for key, record in list(ls.store.items())
        if key.startswith(IDEMPOTENCY_PREFIX) and now - record["created"] > IDEMPOTENCY_TTL
    ]
    for key in expired:
        dict.__delitem__(ls.store, key)  # one dump for all, below
    if expired:
        ls.store.dump_to_disk()


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stripe's idempotent requests: per API key, a POST with a key already used replays
    the first answer (status and body); other parameters or another endpoint → 400
    ``idempotency_error``; the same key still in flight → 409. Saved are answers of
    requests that ran (2xx, and 402 card errors); 4xx validation errors are not."""
    key = request.headers.get("Idempotency-Key")
    api_key = server.get_api_key(request)
    if request.method != "POST" or key is None or api_key is None or not request.path.startswith("/v1/"):
        return await handler(request)
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        return server.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Idempotency-Key must be at most {IDEMPOTENCY_KEY_MAX_LENGTH} characters long.",
                }
            },
            status=400,
        )
    body = await request.read()
    scope = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    record_key = f"{IDEMPOTENCY_PREFIX}{scope}:{key}"
    endpoint = f"{request.method} {request.path}"
    fingerprint = _fingerprint(request, body)
    now = time.time()
    record = ls.store.get(record_key)
    if record is not None and now - record["created"] > IDEMPOTENCY_TTL:
        _purge_idempotency(now)
        record = None
    if record is not None:
        if record["endpoint"] != endpoint:
            return _idempotency_error(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"({record['endpoint']!r} vs {endpoint!r}). Try using a key other than {key!r} if you meant to "
                "execute a different request.",
            )
        if record["fingerprint"] != fingerprint:
            return _idempotency_error(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than {key!r} if you meant to execute a different request.",
            )
        return web.Response(
            body=record["body"],
            status=record["status"],
            content_type="application/json",
            headers={"Idempotent-Replayed": "true", "Original-Request": record["request_id"]},
        )
    if record_key in _in_flight:
        return _idempotency_error(
            409,
            "There is currently another in-progress request using this Stripe-Idempotency-Key (that probably "
            f"means you submitted twice, and the other request is still going through): {key!r}. Please try "
            "again later.",
            code="idempotency_key_in_use",
        )
    _in_flight.add(record_key)
    try:
        response = await handler(request)
    finally:
        _in_flight.discard(record_key)
    if (200 <= response.status < 300 or response.status == 402) and isinstance(response, web.Response):
        content = response.body
        if isinstance(content, bytes):
            ls.store[record_key] = {
                "endpoint": endpoint,
                "fingerprint": fingerprint,
                "status": response.status,
                "body": content,
                "request_id": _request_id.get(),
                "created": now,
            }
    return response


def _store_path() -> str:
    return os.path.join(tempfile.gettempdir(), "localstripe.pickle")


def _store_load(self: Any) -> None:
    """localstripe's load, from the temp folder; an unreadable file is set aside."""
    global _loading_store
    path = _store_path()
    _loading_store = True  # unpickling a Store calls __setitem__ per key: no dump meanwhile
    try:
        with open(path, "rb") as f:
            old = pickle.load(f)  # noqa: S301 - our own store file, written by this process
    except FileNotFoundError:
        return
    except Exception as exc:
        os.replace(path, path + ".unreadable")
        logger.warning("localstripe store %s unreadable (%r): set aside, starting empty", path, exc)
        return
    finally:
        _loading_store = False
    self.clear()
    dict.update(self, old)


def _store_dump(self: Any) -> None:
    """localstripe's dump (on every write), to the temp folder, atomically."""
    if _loading_store:
        return
    path = _store_path()
    with open(path + ".tmp", "wb") as f:
        pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(path + ".tmp", path)


def _set_defaults(cls: Any, defaults: Data) -> None:
    """Class-level defaults: exported like fields, and present on objects pickled earlier."""
    for name, value in defaults.items():
        setattr(cls, name, value)


def install() -> None:
    """Patch localstripe's resources (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True

    ls.Store.try_load_from_disk = _store_load
    ls.Store.dump_to_disk = _store_dump

    ls.Event.__init__ = _event_init

    ls.Customer.invoice_prefix = property(_customer_invoice_prefix, _customer_set_invoice_prefix)
    ls.Customer.next_invoice_sequence = property(_customer_next_invoice_sequence)
    _set_defaults(ls.Customer, {"tax_exempt": "none", "test_clock": None})

    ls.SubscriptionItem.subscription = property(lambda self: self._subscription)
    ls.SubscriptionItem.price = property(lambda self: _price_of_plan(self.plan))
    ls.SubscriptionItem.current_period_start = property(lambda self: self._current_period()["start"])
    ls.SubscriptionItem.current_period_end = property(lambda self: self._current_period()["end"])
    _set_defaults(ls.SubscriptionItem, {"discounts": ()})
    ls.Subscription.__init__ = _subscription_init
    _set_defaults(ls.Subscription, {"discounts": (), "collection_method": "charge_automatically"})

    ls.Charge.amount_captured = property(_charge_amount_captured)
    ls.Charge.payment_method_details = property(_charge_payment_method_details)
    ls.Charge.outcome = property(_charge_outcome)
    _set_defaults(
        ls.Charge,
        {
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "calculated_statement_descriptor": "LOCALSTRIPE",
            "disputed": False,
            "failure_balance_transaction": None,
            "fraud_details": {},
            "on_behalf_of": None,
            "receipt_url": None,
            "review": None,
            "shipping": None,
            "source": None,
            "source_transfer": None,
            "transfer_data": None,
            "transfer_group": None,
        },
    )

    ls.PaymentIntent.amount_received = property(_intent_amount_received)
    ls.PaymentIntent._create_charge = _intent_create_charge
    _set_defaults(
        ls.PaymentIntent,
        {
            "amount_capturable": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "confirmation_method": "automatic",
            "description": None,
            "on_behalf_of": None,
            "payment_method_options": {},
            "payment_method_types": ("card",),
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "transfer_data": None,
            "transfer_group": None,
        },
    )

    _set_defaults(ls.Invoice, INVOICE_DEFAULTS)
    ls.Invoice.status = property(_invoice_status)
    ls.Invoice.amount_paid = property(_invoice_amount_paid)
    ls.Invoice.amount_remaining = property(_invoice_amount_remaining)
    ls.Invoice.next_payment_attempt = property(_invoice_next_payment_attempt)
    ls.Invoice.paid = property(lambda self: self.status == "paid")
    ls.Invoice.paid_out_of_band = property(lambda self: bool(self._paid_out_of_band))
    ls.Invoice.subtotal_excluding_tax = property(lambda self: self.subtotal)
    ls.Invoice.total_excluding_tax = property(lambda self: self.total - self.tax)
    ls.Invoice.total_taxes = property(lambda self: [])
    ls.Invoice._finalize = _finalize_method
    ls.Invoice._on_payment_success = _on_payment_success
    ls.Invoice._api_pay_invoice = classmethod(_api_pay_invoice)

    _set_defaults(ls.InvoiceItem, INVOICE_ITEM_DEFAULTS)
    _set_defaults(ls.InvoiceLineItem, LINE_ITEM_DEFAULTS)
    ls.InvoiceLineItem.amount_excluding_tax = property(lambda self: self.amount)
    ls.InvoiceLineItem.unit_amount_excluding_tax = property(_line_unit_amount_excluding_tax)
    ls.InvoiceLineItem.parent = property(_line_parent)
    ls.InvoiceLineItem.pricing = property(_line_pricing)


def build_app() -> web.Application:
    """Our routes first, then every localstripe route we do not replace."""
    install()
    app = web.Application(
        middlewares=[
            context_middleware,
            idempotency_middleware,
            server.error_middleware,
            server.auth_middleware,
            server.save_store_middleware,
        ]
    )
    app.on_response_prepare.append(server.add_cors_headers)
    ours = {(method, path) for method, path, _ in ROUTES}
    for method, path, fn in ROUTES:
        app.router.add_route(method, path, _endpoint(fn))
    for route in server.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else None
        if canonical is None or (route.method, canonical) in ours:
            continue
        app.router.add_route(route.method, canonical, route.handler)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m billing.localstripe_ext", description="localstripe with our extensions, on 127.0.0.1"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--from-scratch", action="store_true", help="ignore the store saved in $TMPDIR")
    args = parser.parse_args(argv)

    app = build_app()
    if not args.from_scratch:
        ls.store.try_load_from_disk()
    _purge_idempotency(time.time())

    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.DEBUG)
    access_log.addHandler(logging.StreamHandler())
    access_log.propagate = False
    logging.basicConfig(level=logging.INFO)
    print(f"localstripe (extended) store: {_store_path()}", flush=True)
    web.run_app(app, host=HOST, port=args.port, access_log=access_log)


if __name__ == "__main__":
    main()
