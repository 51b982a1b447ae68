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


def _reset_hwm_after_flush(using: str = "default", **kwargs: Any) -> None:
    """Tests only (`AUDIT_RESET_HWM_ON_FLUSH`): after Django's test flush emptied the audit
    tables, lower the high-water mark sequence with them. In production the mark outliving a
    TRUNCATE is the point (audit/verify.py), so nothing resets it there."""
    from django.conf import settings
    from django.db import connections

    from audit.models import AuditChainHead
    from audit.services import HWM_SEQUENCE

    connection = connections[using]
    if not getattr(settings, "AUDIT_RESET_HWM_ON_FLUSH", False) or connection.vendor != "postgresql":
        return
    if AuditChainHead.objects.using(using).exists():
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [HWM_SEQUENCE])
        if cursor.fetchone()[0] is not None:
            cursor.execute(f"SELECT setval('{HWM_SEQUENCE}', 0)")


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        # Imported here: these modules touch models, which must not load at import time.
        from django.core.checks import register

        from audit import signals
        from audit.auditlog_registry import register_models
        from audit.checks import check_database_roles

        register(check_database_roles, "database_roles", deploy=True)
        signals.connect()
        register_models()
        post_migrate.connect(_create_cache_table, sender=self, dispatch_uid="audit.create_cache_table")
        post_migrate.connect(_reset_hwm_after_flush, sender=self, dispatch_uid="audit.reset_hwm_after_flush")
