"""`manage.py check --deploy` runs `check_db_roles` on PostgreSQL (issue 12, item 2): the
application's database role must not be able to TRUNCATE, UPDATE or DELETE the audit trail
(audit/db_roles.py). On other databases (SQLite, development) there are no roles: nothing
is reported."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error
from django.db import DatabaseError, connection


def check_database_roles(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Deploy check: the connection's role is the least-privileged application role."""
    from audit.db_roles import check_roles

    if connection.vendor != "postgresql":
        return []
    try:
        with connection.cursor() as cursor:
            role, problems = check_roles(cursor)
    except DatabaseError as exc:
        return [Error(f"cannot check the database roles: {exc}", id="audit.E100")]
    return [
        Error(
            p.message,
            hint="Run `manage.py check_db_roles --print-grants --app-role <role> --owner-role <role>` "
            "and docs/deploy-db-roles.md.",
            obj=f"database role {role}",
            id="audit.E101",
        )
        for p in problems
    ]
