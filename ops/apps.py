from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations (health and metrics)"

    def ready(self) -> None:
        from ops.signals import connect

        connect()
