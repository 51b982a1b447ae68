"""Database roles, enforced (issue 12, item 2; HIPAA 164.312(c)(1), 164.312(b)).

The application connects as a role that owns no table and holds only what it needs on the
history tables; a separate migration role owns the schema (only an owner or a superuser can
disable or drop the guard triggers, and row triggers do not fire on TRUNCATE, so TRUNCATE must
not be granted at all). `check_roles` verifies that from the catalog; `grant_statements`
prints the SQL that sets it up (docs/deploy-db-roles.md).

What the application's role needs, table by table:

- `audit_auditevent`: SELECT, INSERT, and UPDATE of the seal columns only (seq, prev_hash,
  entry_hash, key_id — the sealer writes them once; the trigger refuses anything after).
  No table-wide UPDATE, no DELETE, no TRUNCATE, no TRIGGER.
- `audit_auditchainhead`: SELECT, INSERT (created once), UPDATE of seq, entry_hash, updated_at
  (the head only moves forward; `SELECT … FOR UPDATE` needs a column UPDATE privilege).
- `audit_auditanchor`: SELECT, INSERT. No UPDATE, DELETE, TRUNCATE.
- the sequence `audit_chain_hwm`: SELECT, UPDATE (`setval` after each seal).
- frozen invoices (`billing_invoice`, `billing_lineitem`): drafts are edited and deleted, and
  the triggers of billing/migrations/0003_guards.py freeze finalized ones; so ordinary DML
  stays, TRUNCATE (which no row trigger sees) is withheld, and the triggers must be enabled.
- append-only ledgers (`billing_planchange`, `patients_activationinterval`): no DELETE, no
  TRUNCATE; their triggers enabled.

Works on any DB-API cursor of a PostgreSQL connection (Django's or psycopg's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.models import HEAD_UPDATE_FIELDS, SEAL_FIELDS

HWM_SEQUENCE = "audit_chain_hwm"


@dataclass(frozen=True)
class TableRule:
    table: str
    required: tuple[str, ...]  # table privileges the application needs
    forbidden: tuple[str, ...]  # table privileges it must not hold
    update_columns: tuple[str, ...] | None  # None: UPDATE is governed by `required`/`forbidden`
    triggers: tuple[str, ...]  # guard triggers that must exist and be enabled


RULES: tuple[TableRule, ...] = (
    TableRule(
        "audit_auditevent",
        required=("SELECT", "INSERT"),
        forbidden=("UPDATE", "DELETE", "TRUNCATE", "TRIGGER"),
        update_columns=SEAL_FIELDS,
        triggers=("audit_event_append_only", "audit_event_no_delete", "audit_event_insert_unsealed"),
    ),
    TableRule(
        "audit_auditchainhead",
        required=("SELECT", "INSERT"),
        forbidden=("UPDATE", "DELETE", "TRUNCATE", "TRIGGER"),
        update_columns=HEAD_UPDATE_FIELDS,
        triggers=("audit_head_only_forward", "audit_head_no_delete"),
    ),
    TableRule(
        "audit_auditanchor",
        required=("SELECT", "INSERT"),
        forbidden=("UPDATE", "DELETE", "TRUNCATE", "TRIGGER"),
        update_columns=(),
        triggers=("audit_anchor_append_only", "audit_anchor_no_delete"),
    ),
    TableRule(
        "billing_invoice",
        required=("SELECT", "INSERT", "UPDATE"),
        forbidden=("TRUNCATE", "TRIGGER"),
        update_columns=None,
        triggers=("invoice_frozen_after_finalize", "invoice_finalized_no_delete"),
    ),
    TableRule(
        "billing_lineitem",
        required=("SELECT", "INSERT", "UPDATE", "DELETE"),
        forbidden=("TRUNCATE", "TRIGGER"),
        update_columns=None,
        triggers=("line_insert_only_on_draft", "line_update_only_on_draft", "line_delete_only_on_draft"),
    ),
    TableRule(
        "billing_planchange",
        required=("SELECT", "INSERT"),
        forbidden=("DELETE", "TRUNCATE", "TRIGGER"),
        update_columns=None,
        triggers=("plan_change_append_only", "plan_change_no_delete"),
    ),
    TableRule(
        "patients_activationinterval",
        required=("SELECT", "INSERT", "UPDATE"),
        forbidden=("DELETE", "TRUNCATE", "TRIGGER"),
        update_columns=None,
        triggers=("interval_only_closes", "interval_no_delete"),
    ),
)
AUDIT_TABLES = ("audit_auditevent", "audit_auditchainhead", "audit_auditanchor")
APPEND_ONLY_LEDGERS = ("billing_planchange", "patients_activationinterval")
FROZEN_TABLES = ("billing_invoice", "billing_lineitem")


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


def _one(cursor: Any, sql: str, params: Sequence[Any] = ()) -> Any:
    cursor.execute(sql, list(params))
    row = cursor.fetchone()
    return None if row is None else row[0]


def _columns(cursor: Any, table: str) -> list[str]:
    cursor.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        [table],
    )
    return [row[0] for row in cursor.fetchall()]


def check_roles(cursor: Any, *, role: str | None = None) -> tuple[str, list[Problem]]:
    """The problems with `role`'s privileges (default: the connection's own role), as
    (role, problems); no problems means the role is the application role this file describes."""
    role = role or _one(cursor, "SELECT current_user")
    problems: list[Problem] = []

    def problem(code: str, message: str) -> None:
        problems.append(Problem(code, message))

    attrs = None
    cursor.execute("SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = %s", [role])
    attrs = cursor.fetchone()
    if attrs is None:
        return role, [Problem("role.missing", f"role {role!r} does not exist")]
    if attrs[0]:
        problem("role.superuser", f"{role} is a superuser: it can drop the guard triggers and TRUNCATE anything")
    if attrs[2]:
        problem("role.createrole", f"{role} can create roles (CREATEROLE): it could grant itself the owner's rights")

    for rule in RULES:
        table = rule.table
        if _one(cursor, "SELECT to_regclass(%s)", [table]) is None:
            problem("table.missing", f"table {table} does not exist (migrations not applied?)")
            continue
        owner = _one(cursor, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(%s)", [table])
        if owner == role:
            problem("owner.app", f"{role} owns {table}: the migration role must own the schema")
        elif _one(cursor, "SELECT pg_has_role(%s, %s, 'MEMBER')", [role, owner]):
            problem("owner.member", f"{role} is a member of {owner}, the owner of {table}: it has the owner's rights")
        for privilege in rule.forbidden:
            if _one(cursor, "SELECT has_table_privilege(%s, %s, %s)", [role, table, privilege]):
                problem(f"privilege.{privilege.lower()}", f"{role} may {privilege} {table}")
        for privilege in rule.required:
            if not _one(cursor, "SELECT has_table_privilege(%s, %s, %s)", [role, table, privilege]):
                problem("privilege.missing", f"{role} lacks {privilege} on {table}, which the application needs")
        if rule.update_columns is not None:
            for column in _columns(cursor, table):
                may = _one(cursor, "SELECT has_column_privilege(%s, %s, %s, 'UPDATE')", [role, table, column])
                if column in rule.update_columns and not may:
                    problem("privilege.missing", f"{role} lacks UPDATE ({column}) on {table}, which the sealer needs")
                elif column not in rule.update_columns and may:
                    problem("privilege.update_column", f"{role} may UPDATE {table}.{column}")
        cursor.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal", [table]
        )
        present = dict(cursor.fetchall())
        for trigger in rule.triggers:
            if trigger not in present:
                problem("trigger.missing", f"guard trigger {trigger} on {table} is missing")
            elif present[trigger] in ("D", b"D"):
                problem("trigger.disabled", f"guard trigger {trigger} on {table} is disabled")

    if _one(cursor, "SELECT to_regclass(%s)", [HWM_SEQUENCE]) is not None:
        for privilege in ("SELECT", "UPDATE"):
            if not _one(cursor, "SELECT has_sequence_privilege(%s, %s, %s)", [role, HWM_SEQUENCE, privilege]):
                problem("privilege.missing", f"{role} lacks {privilege} on the sequence {HWM_SEQUENCE}")
        seq_owner = _one(
            cursor, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(%s)", [HWM_SEQUENCE]
        )
        if seq_owner == role:
            problem("owner.app", f"{role} owns the sequence {HWM_SEQUENCE}: the migration role must own it")
    return role, problems


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain role name: {name!r}")
    return name


def grant_statements(*, app_role: str, owner_role: str, schema: str = "public") -> list[str]:
    """The SQL, run as a superuser (or the owner) after each `migrate`, that gives `app_role`
    exactly what `check_roles` expects and `owner_role` the schema."""
    app, owner, schema = _ident(app_role), _ident(owner_role), _ident(schema)
    seal_cols = ", ".join(SEAL_FIELDS)
    head_cols = ", ".join(HEAD_UPDATE_FIELDS)
    audit = ", ".join(f"{schema}.{t}" for t in AUDIT_TABLES)
    ledgers = ", ".join(f"{schema}.{t}" for t in APPEND_ONLY_LEDGERS)
    return [
        f"-- The migration role {owner} owns every table and sequence; {app} (DATABASE_URL's user) owns none.",
        f"""DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
             -- sequences of identity and serial columns follow their table
             AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i'))) LOOP
    EXECUTE format('ALTER %s {schema}.%I OWNER TO {owner}',
                   CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                  WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, r.relname);
  END LOOP;
END $$;""",  # noqa: S608 (names checked by _ident; printed, not executed here)
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {app};",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {app};",
        f"GRANT USAGE ON SCHEMA {schema} TO {app};",
        f"REVOKE CREATE ON SCHEMA {schema} FROM {app};",
        "-- Ordinary tables: plain DML, never TRUNCATE, TRIGGER or REFERENCES.",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {app};",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {app};",
        "-- The audit trail: append and seal only (UPDATE of the seal columns; no DELETE).",
        f"REVOKE UPDATE, DELETE ON {audit} FROM {app};",
        f"GRANT UPDATE ({seal_cols}) ON {schema}.audit_auditevent TO {app};",
        f"GRANT UPDATE ({head_cols}) ON {schema}.audit_auditchainhead TO {app};",
        f"GRANT SELECT, UPDATE ON SEQUENCE {schema}.{HWM_SEQUENCE} TO {app};",
        "-- Append-only ledgers: no DELETE (their triggers refuse it too).",
        f"REVOKE DELETE ON {ledgers} FROM {app};",
        "-- Frozen invoices and lines keep plain DML for drafts: billing's triggers freeze finalized ones.",
        "-- Tables created by later migrations: the same plain DML by default (re-run this after migrate).",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE "
        f"ON TABLES TO {app};",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {app};",
    ]
