"""Applied migrations are history: replaying them must build what they built the day
they were written (issue 8, defect 13).

- Guard migrations call `config.db_triggers`; if that helper changed what it renders, a
  fresh database would get other triggers than every deployed one. The SQL every guard
  migration renders, for both vendors, is pinned here; a new trigger shape belongs in a
  new helper and a new migration, never in an edit of this one.
- No setting is baked into a migration: `makemigrations --check` finds nothing to do with
  the settings changed (CI also runs it with the defaults)."""

from __future__ import annotations

import hashlib
import importlib
import io

import pytest
from django.core.management import call_command

from config.db_triggers import Guard, _create_sql, _drop_sql

GUARD_MIGRATIONS = {
    "audit.migrations.0002_guards": "GUARDS",
    "audit.migrations.0003_more_guards": "GUARDS",
    "billing.migrations.0003_guards": "GUARDS",
    "billing.migrations.0004_stripe_event": "SECRET_GUARDS",
    "patients.migrations.0002_guards": "GUARDS",
}
# sha256 of every statement the guard migrations render, in order. Change only with a
# migration that drops and recreates the triggers it changes.
PINNED_SQL_SHA256 = "a204b5320f05c7fc947a4053efc57cc0361153678058fa46c3f045b02f3aa7be"


def _rendered() -> str:
    statements: list[str] = []
    for module_name, attribute in GUARD_MIGRATIONS.items():
        guards: list[Guard] = getattr(importlib.import_module(module_name), attribute)
        for vendor in ("postgresql", "sqlite"):
            for guard in guards:
                statements += _create_sql(guard, vendor) + _drop_sql(guard, vendor)
    return "\n".join(statements)


def test_it_renders_the_guard_migrations_exactly_as_they_were_applied() -> None:
    digest = hashlib.sha256(_rendered().encode()).hexdigest()
    assert digest == PINNED_SQL_SHA256, (
        "config/db_triggers.py now renders other SQL for migrations already applied "
        "everywhere; put the new behaviour in a new helper and a new migration"
    )


@pytest.mark.django_db
@pytest.mark.parametrize("zone", ["Asia/Tokyo", "Pacific/Auckland"])
def test_it_needs_no_new_migration_when_a_setting_changes(settings, zone: str) -> None:
    settings.BILLING_DEFAULT_TIMEZONE = zone
    settings.BILLING_DEFAULT_CURRENCY = "eur"
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.parametrize("zone", ["Europe/Berlin"])
def test_it_needs_no_new_migration_in_a_process_started_with_other_settings(zone: str, tmp_path) -> None:
    """The settings as the environment gives them, read at start-up (a default read when
    the models are imported would be baked in; changing `settings` afterwards cannot show
    that, a fresh process can)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "BILLING_DEFAULT_TIMEZONE": zone,
        "BILLING_DEFAULT_CURRENCY": "eur",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",  # nothing applied: all history is "new"
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes detected" in done.stdout
