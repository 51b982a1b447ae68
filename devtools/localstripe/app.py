"""The application: our routes in front of localstripe's own, ``install()`` (the patches
of localstripe's resources), ``build_app()`` and ``main()`` (the command line).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from aiohttp import web
from localstripe import resources as ls
from localstripe import server

from devtools.localstripe import clock
from devtools.localstripe.account import _account, _account_by_id, _checkout_session_create
from devtools.localstripe.common import Data, Endpoint
from devtools.localstripe.customers import (
    _charge_amount_captured,
    _charge_outcome,
    _charge_payment_method_details,
    _customer_invoice_prefix,
    _customer_next_invoice_sequence,
    _customer_search,
    _customer_set_invoice_prefix,
    _intent_amount_received,
    _intent_create_charge,
    _price_of_plan,
    _product_features,
    _subscription_init,
)
from devtools.localstripe.events import _event_init, _events_list
from devtools.localstripe.faults import fault_middleware
from devtools.localstripe.idempotency import _endpoint, _purge_idempotency, context_middleware, idempotency_middleware
from devtools.localstripe.invoices import (
    INVOICE_DEFAULTS,
    _api_pay_invoice,
    _finalize_method,
    _invoice_amount_paid,
    _invoice_amount_remaining,
    _invoice_create,
    _invoice_delete,
    _invoice_finalize,
    _invoice_lines,
    _invoice_list,
    _invoice_mark_uncollectible,
    _invoice_next_payment_attempt,
    _invoice_pay,
    _invoice_retrieve,
    _invoice_send,
    _invoice_status,
    _invoice_update,
    _invoice_void,
    _on_payment_success,
)
from devtools.localstripe.items import (
    INVOICE_ITEM_DEFAULTS,
    LINE_ITEM_DEFAULTS,
    _invoice_item_create,
    _invoice_item_delete,
    _invoice_item_list,
    _invoice_item_retrieve,
    _invoice_item_update,
    _line_parent,
    _line_pricing,
    _line_unit_amount_excluding_tax,
)
from devtools.localstripe.store import _store_dump, _store_load, _store_path

HOST = "127.0.0.1"
DEFAULT_PORT = 8420

_installed = False


ROUTES: tuple[tuple[str, str, Endpoint], ...] = (
    ("GET", "/v1/account", _account),
    ("POST", "/v1/checkout/sessions", _checkout_session_create),
    ("GET", "/v1/accounts/{id}", _account_by_id),
    ("GET", "/v1/events", _events_list),
    ("GET", "/v1/customers/search", _customer_search),
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

    clock.install()  # before anything stamps a time: objects, transitions, events
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
    ls.Invoice.paid_out_of_band = property(lambda self: bool(self._paid_out_of_band))  # dj-stripe 2.11 reads it
    # What the pinned API version reports instead: the amount paid outside Stripe.
    ls.Invoice.amount_paid_off_stripe = property(
        lambda self: int(self.amount_due) if self._paid_out_of_band and self.status == "paid" else 0
    )
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
            fault_middleware,  # tests: injected 429s and the request log (faults.py)
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
    for method in ("GET", "POST"):
        app.router.add_route(method, "/_config/clock", clock.config_clock)
    for route in server.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else None
        if canonical is None or (route.method, canonical) in ours:
            continue
        app.router.add_route(route.method, canonical, route.handler)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.localstripe", description="localstripe with our extensions, on 127.0.0.1"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--from-scratch", action="store_true", help="ignore the store saved in $TMPDIR")
    parser.add_argument(
        "--in-memory", action="store_true", help="never save the store (benchmarks: pickling it on every write is slow)"
    )
    args = parser.parse_args(argv)

    app = build_app()
    if args.in_memory:
        ls.Store.dump_to_disk = lambda self: None
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
