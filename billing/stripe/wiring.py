"""How billing/stripe plugs into the rest of billing at start-up (called from
`BillingConfig.ready`). The engine and the services never import this package: they ask
for a push or a void sync through billing/seam.py, and this module registers the tasks
that answer those requests."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def _sync_customer(sender: Any, office_id: int, **kwargs: Any) -> None:
    if settings.STRIPE_PUSH_ENABLED:
        from billing.stripe.publisher import publisher
        from billing.stripe.tasks import customer_sync_task

        publisher.submit(customer_sync_task, office_id)


def connect() -> None:
    """Install the dj-stripe adapter and the pinned client, and answer the seam's requests."""
    from billing.seam import register_customer_handler, register_push_handler, register_void_handler
    from billing.stripe.djstripe_adapter import install as install_djstripe_adapter
    from billing.stripe.gateway import configure_module_client
    from offices.signals import billing_identity_changed

    billing_identity_changed.connect(_sync_customer, dispatch_uid="billing.sync_customer")
    install_djstripe_adapter()  # dj-stripe never writes the API key into its tables
    configure_module_client()  # dj-stripe's own calls: our pinned version and TLS floor
    if settings.STRIPE_PUSH_ENABLED:
        from billing.stripe.publisher import publisher
        from billing.stripe.tasks import customer_ensure_task, invoice_push_task, invoice_void_sync_task

        # Published from a thread of its own: a request never waits on the broker.
        register_customer_handler(lambda office_id: publisher.submit(customer_ensure_task, office_id))
        register_push_handler(lambda invoice_id: publisher.submit(invoice_push_task, invoice_id))
        register_void_handler(lambda invoice_id: publisher.submit(invoice_void_sync_task, invoice_id))
