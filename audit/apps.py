from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _create_cache_table(using: str = "default", **kwargs: Any) -> None:
    """`migrate` also creates the database cache's table when CACHES uses one.

    Throttle counters on login and API requests (a security control) live in that cache;
    without its table every throttled request would fail. Idempotent, and a no-op for
    other cache backends (Redis)."""
    from django.core.management import call_command

    call_command("createcachetable", database=using, verbosity=0)


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        # Imported here: these modules touch models, which must not load at import time.
        from audit import signals
        from audit.auditlog_registry import register_models

        signals.connect()
        register_models()
        post_migrate.connect(_create_cache_table, sender=self, dispatch_uid="audit.create_cache_table")
