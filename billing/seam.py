"""The one seam between billing and Stripe: the engine and the services ask for work
here, and billing/stripe/wiring.py registers what answers it, so nothing outside
billing/stripe imports the Stripe code.

Finalization leaves a non-zero invoice `open` with `push_state = pending`, then asks for
a push after commit. Until the Stripe gateway is installed (`register_push_handler`),
invoices simply stay pending; whatever pushes them later finds them by `push_state`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction

logger = logging.getLogger("billing.push")

PushHandler = Callable[[int], None]
_handler: PushHandler | None = None


def register_push_handler(handler: PushHandler | None) -> None:
    global _handler
    _handler = handler


_void_handler: PushHandler | None = None


def register_void_handler(handler: PushHandler | None) -> None:
    global _void_handler
    _void_handler = handler


def request_void_sync(invoice_id: int) -> None:
    """After commit, carry a local void to Stripe (no-op until the gateway is installed)."""

    def _after_commit() -> None:
        if _void_handler is not None:
            _void_handler(invoice_id)

    transaction.on_commit(_after_commit, robust=True)


def request_push(invoice_id: int) -> None:
    """Ask for the Stripe push of a finalized invoice once the current transaction commits.

    Stripe is never called inside a database transaction (spec §8)."""

    def _after_commit() -> None:
        if _handler is None:
            logger.info("invoice %s finalized; Stripe push pending (no gateway installed)", invoice_id)
            return
        _handler(invoice_id)

    transaction.on_commit(_after_commit, robust=True)


_customer_handler: PushHandler | None = None


def register_customer_handler(handler: PushHandler | None) -> None:
    global _customer_handler
    _customer_handler = handler


def request_customer_ensure(office_id: int) -> None:
    """After commit, make sure the office has its Stripe customer (spec §8: at subscribe).
    Whatever is not done then is done by the office's first push."""

    def _after_commit() -> None:
        if _customer_handler is not None:
            _customer_handler(office_id)

    transaction.on_commit(_after_commit, robust=True)
