"""Keyed chain (issue 12): `AuditEvent.key_id`, existing entries marked `legacy`, and on
PostgreSQL the high-water mark sequence `audit_chain_hwm`.

History is not rewritten: the column is added with the default `legacy`, which the database
fills into existing rows itself (no UPDATE runs, so the append-only trigger is neither
fired nor bypassed), and the default is then dropped (PostgreSQL) so that new rows get the
key id the sealer writes. On SQLite the column keeps the default (dropping it would rebuild
the table and lose its triggers); the ORM always writes the column anyway."""

import logging
from typing import Any

from django.db import migrations, models

LEGACY = "legacy"
logger = logging.getLogger("audit")


def forward(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    schema_editor.execute(f"ALTER TABLE audit_auditevent ADD COLUMN key_id varchar(32) NOT NULL DEFAULT '{LEGACY}'")
    if vendor == "postgresql":
        schema_editor.execute("ALTER TABLE audit_auditevent ALTER COLUMN key_id DROP DEFAULT")
        schema_editor.execute("CREATE SEQUENCE IF NOT EXISTS audit_chain_hwm MINVALUE 0 START 0")
        # The chain sealed so far is the mark to start from.
        schema_editor.execute(
            "SELECT setval('audit_chain_hwm', GREATEST(0, COALESCE((SELECT seq FROM audit_auditchainhead WHERE id = 1), 0)))"
        )
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT seq FROM audit_auditchainhead WHERE id = 1")
        row = cursor.fetchone()
    if row is not None and row[0]:
        # Operators record it as AUDIT_LEGACY_MAX_SEQ: no legacy entry may appear past it.
        logger.warning(
            "audit chain: entries up to seq %s are legacy (unkeyed); set AUDIT_LEGACY_MAX_SEQ=%s", row[0], row[0]
        )


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP SEQUENCE IF EXISTS audit_chain_hwm")
    schema_editor.execute("ALTER TABLE audit_auditevent DROP COLUMN key_id")


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_unsealed_index")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="auditevent",
                    name="key_id",
                    field=models.CharField(blank=True, default="", max_length=32),
                ),
            ],
            database_operations=[migrations.RunPython(forward, backward)],
        ),
    ]
