"""Database roles, enforced (issue 12, item 2; HIPAA 164.312(c)(1)): `check_db_roles` and the
`check --deploy` system check fail for an over-privileged role and pass for the application
role granted as `check_db_roles --print-grants` prints; that role really gets "permission
denied" on TRUNCATE, DELETE and UPDATE of the audit trail, and can still seal it.

PostgreSQL only. Real roles on the shared server: `auditchain_owner` (migration role, owns the
schema), `auditchain_app` (granted as printed), `auditchain_over` (GRANT ALL), in a database of
this test's own, `auditchain_roles`, holding the test database's schema (pg_dump
--schema-only); all dropped at the end."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from audit.checks import check_database_roles
from audit.db_roles import check_roles, grant_statements
from audit.models import AuditEvent
from audit.services import audit_anchor, audit_record, audit_seal
from audit.verify import verify_chain

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

ROLES_DB = "auditchain_roles"
OWNER, APP, OVER = "auditchain_owner", "auditchain_app", "auditchain_over"


def _server() -> dict[str, str]:
    s = connection.settings_dict
    return {"host": s["HOST"] or "127.0.0.1", "port": str(s["PORT"] or 5432), "user": s["USER"] or "postgres"}


def _pg(tool: str) -> list[str]:
    srv = _server()
    return [tool, "-h", srv["host"], "-p", srv["port"], "-U", srv["user"]]


def _psql(db: str, sql: str) -> None:
    subprocess.run(
        [*_pg("psql"), "-d", db, "-v", "ON_ERROR_STOP=1", "-q"],
        input=sql,
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _drop_all() -> None:
    _psql("postgres", f"DROP DATABASE IF EXISTS {ROLES_DB} WITH (FORCE);")
    _psql("postgres", f"DROP ROLE IF EXISTS {APP}; DROP ROLE IF EXISTS {OVER}; DROP ROLE IF EXISTS {OWNER};")


@pytest.fixture(scope="module")
def roles_db(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://… (as .ci/run does)")
    test_db = connection.settings_dict["NAME"]
    _drop_all()
    try:
        _psql("postgres", f"CREATE DATABASE {ROLES_DB};")
        dump = subprocess.run(
            [*_pg("pg_dump"), "--schema-only", "--no-owner", "--no-privileges", test_db],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        _psql(ROLES_DB, dump.stdout)
        _psql(ROLES_DB, f"CREATE ROLE {OWNER} NOLOGIN; CREATE ROLE {APP} LOGIN; CREATE ROLE {OVER} LOGIN;")
        _psql(ROLES_DB, "\n".join(grant_statements(app_role=APP, owner_role=OWNER)))
        _psql(
            ROLES_DB,
            f"GRANT USAGE ON SCHEMA public TO {OVER}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {OVER};"
            f" GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {OVER};",
        )
        yield ROLES_DB
    finally:
        _drop_all()


def _connect(role: str) -> psycopg.Connection[Any]:
    srv = _server()
    return psycopg.connect(host=srv["host"], port=srv["port"], user=role, dbname=ROLES_DB, autocommit=True)


def test_it_passes_the_role_check_for_the_app_role_granted_as_printed(roles_db: str) -> None:
    with _connect(APP) as conn, conn.cursor() as cursor:
        role, problems = check_roles(cursor)
    assert role == APP
    assert problems == []


def test_it_fails_the_role_check_for_an_over_privileged_role(roles_db: str) -> None:
    with _connect(OVER) as conn, conn.cursor() as cursor:
        role, problems = check_roles(cursor)
    assert role == OVER
    messages = {p.message for p in problems}
    for table in ("audit_auditevent", "audit_auditchainhead", "audit_auditanchor"):
        for privilege in ("TRUNCATE", "DELETE", "UPDATE"):
            assert f"{OVER} may {privilege} {table}" in messages
    assert f"{OVER} may TRUNCATE billing_invoice" in messages
    assert f"{OVER} may UPDATE audit_auditevent.reason" in messages
    assert f"{OVER} may DELETE billing_planchange" in messages
    # The superuser the suite connects as is refused outright.
    with _connect(OVER) as conn, conn.cursor() as cursor:
        _, problems = check_roles(cursor, role=_server()["user"])
    assert "role.superuser" in {p.code for p in problems}


def test_it_refuses_truncate_delete_and_update_to_the_app_role_and_lets_it_seal(roles_db: str) -> None:
    with _connect(APP) as conn:
        cur = conn.cursor()
        # What the sealer does, statement by statement: all allowed.
        cur.execute(
            "INSERT INTO audit_auditevent (ts, actor_type, actor_id, actor_label, action, target_type, target_id,"
            " outcome, reason, request_id, task_id, data, key_id) VALUES (now(), 'system', '', '', 'test', '', '',"
            " 'success', '', '', '', '{}', '') RETURNING id"
        )
        row = cur.fetchone()
        assert row is not None
        entry_id = row[0]
        cur.execute(
            "INSERT INTO audit_auditchainhead (id, seq, entry_hash, updated_at) VALUES (1, 0, %s, now())", ["0" * 64]
        )
        cur.execute("SELECT seq FROM audit_auditchainhead WHERE id = 1 FOR UPDATE")
        cur.execute(
            "UPDATE audit_auditevent SET seq = 1, prev_hash = %s, entry_hash = %s, key_id = 'k1' WHERE id = %s",
            ["0" * 64, "a" * 64, entry_id],
        )
        cur.execute(
            "UPDATE audit_auditchainhead SET seq = 1, entry_hash = %s, updated_at = now() WHERE id = 1", ["a" * 64]
        )
        cur.execute("INSERT INTO audit_auditanchor (seq, entry_hash, anchored_at) VALUES (1, %s, now())", ["a" * 64])
        cur.execute("SELECT setval('audit_chain_hwm', 1)")

        refused = [
            "TRUNCATE audit_auditevent",
            "TRUNCATE audit_auditchainhead",
            "TRUNCATE audit_auditanchor",
            "TRUNCATE billing_invoice",
            "TRUNCATE billing_lineitem",
            "DELETE FROM audit_auditevent",
            "DELETE FROM audit_auditchainhead",
            "DELETE FROM audit_auditanchor",
            "UPDATE audit_auditevent SET reason = 'rewritten'",
            "UPDATE audit_auditanchor SET seq = 2",
            "DELETE FROM billing_planchange",
            "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
            "DROP TRIGGER audit_event_append_only ON audit_auditevent",
        ]
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"permission denied|must be owner"):
                cur.execute(statement)
        cur.execute("SELECT count(*) FROM audit_auditevent")
        assert cur.fetchone() == (1,)


def test_it_runs_the_real_sealer_and_the_deploy_check_as_the_app_role(roles_db: str) -> None:
    """In the suite's own database, inside the test's transaction (rolled back): the schema
    handed to the migration role, the app role granted as printed, and then the ORM code
    itself — record, seal, anchor, verify — and `check --deploy` run as that role."""
    with pytest.raises(CommandError, match="over-privileged"):
        call_command("check_db_roles", stdout=io.StringIO(), stderr=io.StringIO())  # as the superuser
    assert {e.id for e in check_database_roles()} == {"audit.E101"}

    with connection.cursor() as cursor:
        for statement in grant_statements(app_role=APP, owner_role=OWNER):
            cursor.execute(statement)
        cursor.execute(f"SET ROLE {APP}")
    try:
        audit_record(action="invoice.finalized", target_type="billing.Invoice", target_id=1)
        audit_record(action="invoice.voided", target_type="billing.Invoice", target_id=1)
        assert audit_seal() == 2
        assert audit_anchor() is not None
        assert verify_chain().ok
        assert AuditEvent.objects.filter(seq__isnull=False).count() == 2
        out = io.StringIO()
        call_command("check_db_roles", stdout=out)
        assert f"OK: role {APP} cannot TRUNCATE" in out.getvalue()
        assert check_database_roles() == []
        call_command("check", "--deploy", "--tag", "database_roles", stdout=io.StringIO())
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")


def test_it_prints_grants_that_name_only_plain_roles() -> None:
    out = io.StringIO()
    call_command("check_db_roles", "--print-grants", "--app-role", "app1", "--owner-role", "own1", stdout=out)
    sql = out.getvalue()
    assert "GRANT UPDATE (seq, prev_hash, entry_hash, key_id) ON public.audit_auditevent TO app1;" in sql
    assert "TRUNCATE" not in sql.replace("never TRUNCATE", "")
    with pytest.raises(CommandError, match="not a plain role name"):
        call_command("check_db_roles", "--print-grants", "--app-role", "x; DROP TABLE y", stdout=io.StringIO())
