from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Emails"

    def ready(self) -> None:
        # Imported here: the receiver touches models, which must not load at import time.
        from notifications import signals

        signals.connect()
