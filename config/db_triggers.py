"""Guard triggers declared in migrations, for PostgreSQL and SQLite (spec §6, §9).

They make the database refuse what the ORM could otherwise be used to do around the
services: editing frozen invoices, lines and plan prices, rewriting history. On
PostgreSQL, DELETE is refused too; on SQLite (development), deletions are refused by the
application and detected by the audit chain, because Django's test flush deletes rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import migrations


@dataclass(frozen=True)
class Guard:
    """`name` refuses `event` (UPDATE | INSERT | DELETE) on `table` when `when` holds.

    `when` is written once with {distinct} placeholders: `{distinct:col}` expands to a
    null-safe "changed" test on that column for the running database."""

    name: str
    table: str
    event: str
    when: str
    message: str
    postgres_only: bool = False


def changed(columns: Sequence[str]) -> str:
    return "(" + " OR ".join(f"{{distinct:{c}}}" for c in columns) + ")"


def _render(when: str, vendor: str) -> str:
    import re

    op = "IS DISTINCT FROM" if vendor == "postgresql" else "IS NOT"
    when = re.sub(r"\{distinct:(\w+)\}", lambda m: f"NEW.{m.group(1)} {op} OLD.{m.group(1)}", when)
    if vendor == "postgresql":
        when = when.replace("{true}", "TRUE").replace("{false}", "FALSE")
    else:
        when = when.replace("{true}", "1").replace("{false}", "0")
    return when


def _create_sql(guard: Guard, vendor: str) -> list[str]:
    when = _render(guard.when, vendor)
    message = guard.message.replace("'", "''")
    if vendor == "postgresql":
        ret = "OLD" if guard.event == "DELETE" else "NEW"
        return [
            f"""CREATE OR REPLACE FUNCTION {guard.name}_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF {when} THEN
        RAISE EXCEPTION '{message}' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN {ret};
END $$;""",
            f"DROP TRIGGER IF EXISTS {guard.name} ON {guard.table};",
            f"CREATE TRIGGER {guard.name} BEFORE {guard.event} ON {guard.table} FOR EACH ROW EXECUTE FUNCTION {guard.name}_fn();",
        ]
    if vendor == "sqlite":
        if guard.postgres_only:
            return []
        return [
            f"DROP TRIGGER IF EXISTS {guard.name};",
            f"CREATE TRIGGER {guard.name} BEFORE {guard.event} ON {guard.table} FOR EACH ROW WHEN {when} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END;",
        ]
    raise NotImplementedError(f"guard triggers are not written for {vendor}")


def _drop_sql(guard: Guard, vendor: str) -> list[str]:
    if vendor == "postgresql":
        return [f"DROP TRIGGER IF EXISTS {guard.name} ON {guard.table};", f"DROP FUNCTION IF EXISTS {guard.name}_fn();"]
    return [f"DROP TRIGGER IF EXISTS {guard.name};"]


def install(guards: Sequence[Guard]) -> migrations.RunPython:
    def forward(apps: Any, schema_editor: Any) -> None:
        for guard in guards:
            for sql in _create_sql(guard, schema_editor.connection.vendor):
                schema_editor.execute(sql)

    def backward(apps: Any, schema_editor: Any) -> None:
        for guard in guards:
            for sql in _drop_sql(guard, schema_editor.connection.vendor):
                schema_editor.execute(sql)

    return migrations.RunPython(forward, backward)
