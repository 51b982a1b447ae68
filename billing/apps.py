from typing import Any

from django.apps import AppConfig
from django.conf import settings


def _sync_customer(sender: Any, office_id: int, **kwargs: Any) -> None:
    if settings.STRIPE_PUSH_ENABLED:
        from billing.stripe_push import customer_sync_task

        customer_sync_task.delay(office_id)


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        from offices.signals import billing_identity_changed

        billing_identity_changed.connect(_sync_customer, dispatch_uid="billing.sync_customer")
        from billing.djstripe_adapter import install as install_djstripe_adapter
        from billing.stripe_gateway import configure_module_client

        install_djstripe_adapter()  # dj-stripe never writes the API key into its tables
        configure_module_client()  # dj-stripe's own calls: our pinned version and TLS floor
        if settings.STRIPE_PUSH_ENABLED:
            from billing.push import register_push_handler, register_void_handler
            from billing.stripe_push import invoice_void_sync_task
            from billing.tasks import invoice_push_task

            register_push_handler(lambda invoice_id: invoice_push_task.delay(invoice_id))
            register_void_handler(lambda invoice_id: invoice_void_sync_task.delay(invoice_id))
