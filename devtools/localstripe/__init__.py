"""localstripe, extended in-process with the parts of Stripe our billing uses.

Run as ``python -m devtools.localstripe --port N [--from-scratch]`` (the flags of
``localstripe``). It imports localstripe 1.15.10, patches its resources, builds an aiohttp
application with our routes in front of localstripe's own, and serves it on 127.0.0.1 only.

What is added (docs/stripe-localstripe.md lists each addition with what real Stripe does
and where we differ):

- standalone invoices (a customer without a subscription): create, update, delete, list
  with filters and pagination, finalize, send, pay (card or ``paid_out_of_band``), void,
  mark uncollectible, automatic collection when ``auto_advance`` is true (``invoices``);
- invoice items attached to a draft invoice, priced ``quantity`` × unit amount (``items``);
- idempotency-key replay on every POST, scoped per API key (``idempotency``);
- ``GET /v1/account``, Stripe-style errors, a ``Request-Id`` header on every answer
  (``account``, ``common``, ``idempotency``);
- the fields dj-stripe 2.11 reads (``discounts``, ``subscription``/``price`` on
  subscription items, …; ``customers``) and ``invoice.*`` events, delivered through
  localstripe's signed webhooks (``events``);
- a movable clock, ``POST /_config/clock`` (``frozen_time``), for backdated demo
  histories (``clock``);
- the pickled store kept in the system temp folder (``TMPDIR``), written atomically:
  localstripe itself hard-codes ``/tmp/localstripe.pickle`` (``store``);
- for tests only: injected faults (e.g. 429 with ``Retry-After``) and a log of when each
  request arrived, under ``/_config/faults`` and ``/_config/requests`` (``faults``).

``app`` puts it together: ``install()`` patches localstripe's resources, ``build_app()``
builds the application, ``main()`` is the command line (``__main__``).

Development only: nothing here is imported by the Django project; tests start it as a
subprocess (billing/tests/support/localstripe_server.py) and reach it over HTTP.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devtools.localstripe.account import account_object
    from devtools.localstripe.app import DEFAULT_PORT, HOST, ROUTES, build_app, install, main

__all__ = ["DEFAULT_PORT", "HOST", "ROUTES", "account_object", "build_app", "install", "main"]

# Re-exported on first use, so that importing the package (pytest collecting its tests,
# which talk to a subprocess) does not import localstripe and aiohttp into that process.
_EXPORTS = {
    "DEFAULT_PORT": "app",
    "HOST": "app",
    "ROUTES": "app",
    "account_object": "account",
    "build_app": "app",
    "install": "app",
    "main": "app",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
