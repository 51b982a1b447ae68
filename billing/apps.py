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
        if settings.STRIPE_PUSH_ENABLED:
            from billing.push import register_push_handler
            from billing.tasks import invoice_push_task

            register_push_handler(lambda invoice_id: invoice_push_task.delay(invoice_id))
