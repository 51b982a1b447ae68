"""Invoice items (attached to a draft invoice, priced ``quantity`` × unit amount) and the
invoice lines built from them.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from localstripe import resources as ls

from devtools.localstripe.common import (
    Data,
    _as_bool,
    _as_decimal,
    _as_int,
    _as_str,
    _created_filter,
    _error,
    _metadata,
    _objects,
    _page,
    _reject_unknown,
    _retrieve,
)
from devtools.localstripe.events import _emit

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
