"""Backup and restore drill (issue 12, item 8; HIPAA 164.308(a)(7)(ii)(A) data backup plan,
(B) disaster recovery plan, 164.312(c)(1) integrity), as docs/restore.md describes it.

On PostgreSQL, with the real tools: entries are recorded and sealed (committed, as in
production), anchored to the table and to the application log (a file, standing for the log
shipped off the database host); `pg_dump -Fc` takes a backup; `createdb` + `pg_restore` bring it
back into a fresh database of this test's own; `manage.py verify_audit_chain --anchors-log`,
run as a separate process against the restored database, checks the chain against the log.
A full restore verifies; a restore from an older backup, which lost the last entries, is
reported as truncated — though the restored database alone (its head, anchors and high-water
mark all from the same old backup) looks intact."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from audit.models import AuditEvent
from audit.services import audit_anchor, audit_record

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(settings.BASE_DIR)
RESTORED = ("auditchain_restore_full", "auditchain_restore_old")


def _pg(tool: str) -> list[str]:
    s = connection.settings_dict
    path = shutil.which(tool)
    assert path is not None, f"{tool} is not installed"
    return [path, "-h", s["HOST"] or "127.0.0.1", "-p", str(s["PORT"] or 5432), "-U", s["USER"] or "postgres"]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload,no-any-return]


def _dropdb(name: str) -> None:
    _run([*_pg("dropdb"), "--if-exists", "--force", name])


def _restore(dump: Path, name: str) -> None:
    _dropdb(name)
    assert _run([*_pg("createdb"), name]).returncode == 0
    result = _run([*_pg("pg_restore"), "--no-owner", "--exit-on-error", "-d", name, str(dump)])
    assert result.returncode == 0, result.stderr


def _verify(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    s = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{s['USER'] or 'postgres'}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{name}",
    }
    return _run([sys.executable, "manage.py", "verify_audit_chain", *extra], cwd=ROOT, env=env)


@pytest.fixture
def app_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "app.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("audit.anchor")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def restored_dbs() -> Iterator[None]:
    yield
    for name in RESTORED:
        _dropdb(name)


def _record(n: int, start: int) -> None:
    for i in range(start, start + n):  # autocommit: each sealed right after its commit
        audit_record(action="invoice.finalized", target_type="billing.Invoice", target_id=i, data={"i": i})


def test_it_restores_a_backup_and_detects_a_restore_that_lost_the_last_entries(
    on_postgres: None, app_log: Path, restored_dbs: None, tmp_path: Path
) -> None:
    source = connection.settings_dict["NAME"]
    _record(6, 1)
    audit_anchor()
    old_backup = tmp_path / "old.dump"
    assert _run([*_pg("pg_dump"), "-Fc", "-f", str(old_backup), source]).returncode == 0
    _record(3, 7)
    audit_anchor()
    backup = tmp_path / "full.dump"
    assert _run([*_pg("pg_dump"), "-Fc", "-f", str(backup), source]).returncode == 0
    assert AuditEvent.objects.filter(seq__isnull=False).count() == 9
    assert "audit.anchor seq=9 " in app_log.read_text()

    # The full backup, restored into a fresh database, verifies against the log.
    _restore(backup, RESTORED[0])
    full = _verify(RESTORED[0], "--anchors-log", str(app_log))
    assert full.returncode == 0, full.stdout + full.stderr
    assert "OK: audit chain intact: 9 sealed entries (seq 1..9)" in full.stdout
    assert "2 log anchors matched" in full.stdout

    # The older backup lost seq 7..9: on its own it looks intact, the log says otherwise.
    _restore(old_backup, RESTORED[1])
    alone = _verify(RESTORED[1])
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "6 sealed entries" in alone.stdout
    lost = _verify(RESTORED[1], "--anchors-log", str(app_log))
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert "BROKEN — truncated at seq 7" in lost.stderr
    assert "the application log anchored seq 9" in lost.stderr
