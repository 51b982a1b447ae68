from django.apps import AppConfig
from django.conf import settings


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        if settings.STRIPE_PUSH_ENABLED:
            from billing.push import register_push_handler
            from billing.tasks import invoice_push_task

            register_push_handler(lambda invoice_id: invoice_push_task.delay(invoice_id))
