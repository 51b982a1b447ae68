"""Customers, subscription items, charges, payment intents (and product features): the
fields dj-stripe reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from localstripe import resources as ls
from localstripe.errors import UserError

from devtools.localstripe.common import Data, _error, _objects, _page, _reject_unknown, _retrieve


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


_METADATA_QUERY = re.compile(r"""^metadata\[['"]([A-Za-z0-9_]+)['"]\]:['"]([^'"]*)['"]$""")


def _customer_search(data: Data, _match: dict[str, str], expand: list[str] | None) -> Data:
    """``GET /v1/customers/search`` for the one query form we use, ``metadata['key']:'value'``
    (Stripe's search language has many more; anything else is a 400 here). A search result
    object: ``object: search_result``, ``data``, ``has_more``, ``next_page``, ``url``."""
    _reject_unknown(data, ("query", "limit", "page"))
    query = str(data.get("query") or "").strip()
    found = _METADATA_QUERY.match(query)
    if not found:
        raise _error(400, f"Unsupported search query for localstripe: {query!r}", param="query")
    key, value = found.groups()
    limit = int(data.get("limit") or 10)
    if not 1 <= limit <= 100:
        raise _error(400, "Invalid limit: must be between 1 and 100", param="limit")
    matches = [
        c
        for c in _objects(ls.Customer)
        if str((c.metadata or {}).get(key, "")) == value and not getattr(c, "deleted", False)
    ]
    item_expand = [path[len("data.") :] for path in expand or [] if path.startswith("data.")]
    return {
        "object": "search_result",
        "url": "/v1/customers/search",
        "data": [c._export(expand=item_expand) for c in matches[:limit]],
        "has_more": len(matches) > limit,
        "next_page": None,
    }
