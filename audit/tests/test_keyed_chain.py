"""The keyed chain (issue 12, item 1; spec §9, HIPAA 164.312(b), 164.312(c)(1)).

Entries are sealed with HMAC-SHA256 under the current key of `AUDIT_HMAC_KEYS`, with the key
id on each entry; rotated keys still verify their entries; entries sealed with the old
unkeyed scheme verify as `legacy`. A tail rewritten by someone with database access but
without the key — re-hashed with plain SHA-256, as the unkeyed chain allowed — is reported.
The anchors written to the application log (outside the database) catch a TRUNCATE of the
audit, head and anchor tables; on PostgreSQL so does the high-water mark sequence. Time
running backwards along the chain is recorded as a finding when sealing and reported.

Tampering is done as in test_verify.py: guards off as a database owner would, raw SQL."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from audit.keys import LEGACY_KEY_ID
from audit.models import AuditEvent
from audit.services import (
    BACKDATED_ACTION,
    GENESIS_HASH,
    HWM_SEQUENCE,
    audit_anchor,
    audit_record,
    audit_seal,
    canonical_content,
    compute_entry_hash,
)
from audit.tests.test_verify import assert_broken, guards_off, sql
from audit.verify import BreakKind, read_log_anchors, verify_chain

pytestmark = pytest.mark.django_db

T_LEGACY = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
K1 = "k1:first-secret-of-the-audit-chain-0123456789abcdef"
K2 = "k2:second-secret-of-the-audit-chain-0123456789abcdef"


def _record_some(n: int, *, start: int = 0) -> None:
    for i in range(start, start + n):
        audit_record(action="invoice.finalized", target_type="billing.Invoice", target_id=100 + i, data={"i": i})


def _plain_sha256(event: AuditEvent, seq: int, prev_hash: str) -> str:
    """What the unkeyed chain computed: anyone can, no key needed."""
    body = json.dumps({"seq": seq, **canonical_content(event)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode() + prev_hash.encode()).hexdigest()


def _rewrite_tail(from_seq: int, *, key_id: str | None) -> None:
    """An attacker without the key edits every entry from `from_seq` and re-hashes the tail
    with plain SHA-256 (keeping the key id, or claiming `legacy` when `key_id` is given)."""
    guards_off()
    sql("UPDATE audit_auditevent SET reason = 'nothing to see' WHERE seq >= %s", [from_seq])
    prev = AuditEvent.objects.get(seq=from_seq - 1).entry_hash if from_seq > 1 else GENESIS_HASH
    for event in AuditEvent.objects.filter(seq__gte=from_seq).order_by("seq"):
        assert event.seq is not None and prev is not None
        new = _plain_sha256(event, event.seq, prev)
        sql(
            "UPDATE audit_auditevent SET prev_hash = %s, entry_hash = %s, key_id = %s WHERE id = %s",
            [prev, new, key_id or event.key_id, event.pk],
        )
        prev = new
    sql("UPDATE audit_auditchainhead SET entry_hash = %s WHERE id = 1", [prev])


@pytest.fixture
def anchor_log(tmp_path: Path) -> Iterator[Path]:
    """The application log's anchor lines, in a file (as a log shipper would keep them)."""
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


# --- Keys and rotation ------------------------------------------------------------------


@override_settings(AUDIT_HMAC_KEYS=K1)
def test_it_seals_with_an_hmac_of_the_current_key_and_stores_its_id() -> None:
    _record_some(3)
    audit_seal()

    events = list(AuditEvent.objects.order_by("seq"))
    assert {e.key_id for e in events} == {"k1"}
    for event in events:
        assert event.seq is not None and event.prev_hash is not None
        assert event.entry_hash != _plain_sha256(event, event.seq, event.prev_hash)  # not the unkeyed hash
        assert event.entry_hash == compute_entry_hash(event=event, seq=event.seq, prev_hash=event.prev_hash)
    with override_settings(AUDIT_HMAC_KEYS="k1:another-secret-entirely-0123456789abcdef"):
        assert verify_chain().broken is not None  # the same id with another secret: nothing verifies


def test_it_verifies_entries_of_a_rotated_key_with_the_old_key() -> None:
    with override_settings(AUDIT_HMAC_KEYS=K1):
        _record_some(3)
        audit_seal()
    with override_settings(AUDIT_HMAC_KEYS=f"{K2},{K1}"):  # rotated: k2 current, k1 kept to verify
        _record_some(3, start=3)
        audit_seal()
        assert list(AuditEvent.objects.order_by("seq").values_list("key_id", flat=True)) == ["k1"] * 3 + ["k2"] * 3
        report = verify_chain()
        assert report.ok, report.broken and report.broken.describe()
        assert report.sealed == 6
    with override_settings(AUDIT_HMAC_KEYS=K2):  # k1 retired too early
        report = verify_chain()
        first = AuditEvent.objects.get(seq=1)
        assert_broken(report, BreakKind.UNKNOWN_KEY, 1, first.pk)
        assert "'k1'" in report.broken.detail  # type: ignore[union-attr]


# --- A forged tail ----------------------------------------------------------------------


def test_it_reports_a_forged_tail_that_a_plain_rehash_would_pass() -> None:
    _record_some(8)
    audit_seal()
    _rewrite_tail(5, key_id=None)

    # The forged tail is consistent under the old unkeyed rule: every link and hash recomputes.
    prev = AuditEvent.objects.get(seq=4).entry_hash
    for event in AuditEvent.objects.filter(seq__gte=5).order_by("seq"):
        assert event.prev_hash == prev and event.entry_hash == _plain_sha256(event, event.seq or 0, prev or "")
        prev = event.entry_hash
    report = verify_chain()
    assert_broken(report, BreakKind.EDITED, 5, AuditEvent.objects.get(seq=5).pk)


def test_it_reports_a_forged_tail_that_claims_the_legacy_scheme() -> None:
    _record_some(8)
    audit_seal()
    _rewrite_tail(6, key_id=LEGACY_KEY_ID)

    report = verify_chain()
    assert_broken(report, BreakKind.EDITED, 6, AuditEvent.objects.get(seq=6).pk)
    assert "legacy" in report.broken.detail  # type: ignore[union-attr]


def test_it_reports_a_whole_chain_rehashed_as_legacy_past_the_legacy_boundary() -> None:
    _record_some(4)
    audit_seal()
    _rewrite_tail(1, key_id=LEGACY_KEY_ID)
    assert verify_chain().ok  # without a boundary, an all-legacy chain is indistinguishable

    with override_settings(AUDIT_LEGACY_MAX_SEQ=0):
        assert_broken(verify_chain(), BreakKind.EDITED, 1, AuditEvent.objects.get(seq=1).pk)


# --- Legacy entries (sealed before keys existed) ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_verifies_legacy_entries_marked_by_the_migration_and_chains_keyed_ones_after_them() -> None:
    """Entries sealed by the unkeyed sealer before migration 0005 keep their hashes; the
    migration marks them `legacy` without an UPDATE; new entries chain after them, keyed."""
    executor = MigrationExecutor(connection)
    executor.migrate([("audit", "0004_unsealed_index")])
    try:
        prev = GENESIS_HASH
        for seq in range(1, 4):  # what the old sealer wrote, by its own algorithm
            event = AuditEvent(
                ts=datetime(2026, 11, 1, 9, seq, tzinfo=UTC), actor_type="system", action="legacy.entry", data={}
            )
            content = canonical_content(event)
            entry_hash = _plain_sha256(event, seq, prev)
            sql(
                "INSERT INTO audit_auditevent (ts, actor_type, actor_id, actor_label, action, target_type, target_id,"
                " outcome, reason, request_id, task_id, data) VALUES (%s, 'system', '', '', 'legacy.entry', '', '',"
                " 'success', '', '', '', '{}')",
                [event.ts],
            )
            sql(
                "UPDATE audit_auditevent SET seq = %s, prev_hash = %s, entry_hash = %s WHERE seq IS NULL",
                [seq, prev, entry_hash],
            )
            assert content["ts"].startswith("2026-11-01")
            prev = entry_hash
        sql(
            "INSERT INTO audit_auditchainhead (id, seq, entry_hash, updated_at) VALUES (1, 3, %s, %s)", [prev, T_LEGACY]
        )
    finally:
        MigrationExecutor(connection).migrate([("audit", "0005_keyed_chain")])

    assert list(AuditEvent.objects.order_by("seq").values_list("key_id", flat=True)) == [LEGACY_KEY_ID] * 3
    _record_some(2)
    audit_seal()
    keys = list(AuditEvent.objects.order_by("seq").values_list("key_id", flat=True))
    assert keys[:3] == [LEGACY_KEY_ID] * 3 and keys[3:] == ["test"] * 2
    report = verify_chain()
    assert report.ok, report.broken and report.broken.describe()
    assert (report.sealed, report.legacy_entries) == (5, 3)
    with override_settings(AUDIT_LEGACY_MAX_SEQ=3):
        assert verify_chain().ok
    with override_settings(AUDIT_LEGACY_MAX_SEQ=2):
        assert_broken(verify_chain(), BreakKind.EDITED, 3, AuditEvent.objects.get(seq=3).pk)


# --- Anchors in the application log, truncation -------------------------------------------


def test_it_writes_each_anchor_as_a_structured_log_line(anchor_log: Path) -> None:
    _record_some(3)
    audit_seal()
    anchor = audit_anchor()
    assert anchor is not None

    line = anchor_log.read_text().strip().splitlines()[-1]
    assert " audit.anchor audit.anchor seq=3 hash=" in line
    assert f"hash={anchor.entry_hash} ts={anchor.anchored_at.astimezone(UTC).isoformat(timespec='seconds')}" in line
    assert [(a.seq, a.entry_hash) for a in read_log_anchors(anchor_log)] == [(3, anchor.entry_hash)]


def test_it_reports_a_truncated_chain_against_the_log_anchors(anchor_log: Path) -> None:
    _record_some(5)
    audit_seal()
    audit_anchor()
    assert verify_chain(log_anchors=read_log_anchors(anchor_log)).ok

    guards_off()
    for table in ("audit_auditevent", "audit_auditchainhead", "audit_auditanchor"):
        sql(f"TRUNCATE {table}" if connection.vendor == "postgresql" else f"DELETE FROM {table}")

    if connection.vendor == "sqlite":  # no high-water mark there: without the log it looks empty
        assert verify_chain().ok
    report = verify_chain(log_anchors=read_log_anchors(anchor_log))
    assert_broken(report, BreakKind.TRUNCATED, 1, None)
    assert "the application log anchored seq 5" in report.broken.detail  # type: ignore[union-attr]


def test_it_reports_an_altered_entry_and_a_missing_tail_against_the_log_anchors(anchor_log: Path) -> None:
    _record_some(4)
    audit_seal()
    audit_anchor()
    _record_some(3, start=4)
    audit_seal()
    audit_anchor()
    log = read_log_anchors(anchor_log)
    assert [a.seq for a in log] == [4, 7]

    # Rewritten by someone holding the key, head and anchor rows included: only the log knows.
    guards_off()
    sql("UPDATE audit_auditevent SET reason = 'rewritten' WHERE seq = 2")
    sql("DELETE FROM audit_auditanchor")
    prev = AuditEvent.objects.get(seq=1).entry_hash
    for event in AuditEvent.objects.filter(seq__gte=2).order_by("seq"):
        new = compute_entry_hash(event=event, seq=event.seq or 0, prev_hash=prev or "")
        sql("UPDATE audit_auditevent SET prev_hash = %s, entry_hash = %s WHERE id = %s", [prev, new, event.pk])
        prev = new
    sql("UPDATE audit_auditchainhead SET entry_hash = %s WHERE id = 1", [prev])
    assert verify_chain().ok
    assert_broken(verify_chain(log_anchors=log), BreakKind.EDITED, 4, AuditEvent.objects.get(seq=4).pk)

    # The last entries gone, head rewound: the log's anchor at seq 7 lies past the end.
    sql("DELETE FROM audit_auditevent WHERE seq > 5")
    five = AuditEvent.objects.get(seq=5)
    sql("UPDATE audit_auditchainhead SET seq = 5, entry_hash = %s WHERE id = 1", [five.entry_hash])
    assert_broken(verify_chain(log_anchors=log[1:]), BreakKind.TRUNCATED, 6, None)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_reports_a_truncate_of_all_audit_tables_by_the_high_water_mark(on_postgres: None) -> None:
    """A real commit advances `audit_chain_hwm`; TRUNCATE (even RESTART IDENTITY) leaves it."""
    _record_some(4)  # autocommit: sealed after each commit
    assert AuditEvent.objects.filter(seq__isnull=False).count() == 4
    audit_anchor()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last_value FROM {HWM_SEQUENCE}")
        assert cursor.fetchone()[0] == 4
    assert verify_chain().ok

    sql("TRUNCATE audit_auditevent, audit_auditchainhead, audit_auditanchor RESTART IDENTITY")

    report = verify_chain()
    assert_broken(report, BreakKind.TRUNCATED, 1, None)
    assert HWM_SEQUENCE in report.broken.detail  # type: ignore[union-attr]
    out = io.StringIO()
    with pytest.raises(CommandError, match="BROKEN — truncated at seq 1"):
        call_command("verify_audit_chain", stdout=out)


# --- Time running backwards -----------------------------------------------------------------


def test_it_flags_a_backdated_row_when_sealing_and_verify_reports_it() -> None:
    _record_some(3)
    audit_seal()
    # An unsealed row inserted directly, dated 2021 (INSERT is not guarded: only chain fields are).
    forged = AuditEvent.objects.create(
        ts=datetime(2021, 3, 1, 12, 0, tzinfo=UTC), actor_type="system", action="invoice.voided", reason="late"
    )

    audit_seal()

    forged.refresh_from_db()
    assert forged.seq == 4  # sealed: nothing is lost, and the chain stays complete
    finding = AuditEvent.objects.get(action=BACKDATED_ACTION)
    assert finding.seq == 5 and finding.outcome == "failure"
    assert (finding.target_type, finding.target_id) == ("audit.AuditEvent", str(forged.pk))
    assert finding.data["ts"].startswith("2021-03-01") and finding.data["tolerance_seconds"] == 300
    report = verify_chain()
    assert report.ok  # the chain holds …
    assert [(f.seq, f.entry_id) for f in report.findings] == [(4, forged.pk)]  # … but the entry is reported
    out, err = io.StringIO(), io.StringIO()
    call_command("verify_audit_chain", stdout=out, stderr=err)  # a warning by default …
    assert out.getvalue().startswith("OK: audit chain intact") and "1 finding(s)" in out.getvalue()
    assert f"FINDING: seq 4 (entry id {forged.pk}): backdated" in err.getvalue()
    with pytest.raises(CommandError, match="1 finding") as failure:  # … a failure when asked
        call_command("verify_audit_chain", "--fail-on-findings", stdout=io.StringIO(), stderr=io.StringIO())
    assert failure.value.returncode == 3


def test_it_accepts_entries_out_of_order_within_the_tolerance() -> None:
    _record_some(2)
    audit_seal()
    AuditEvent.objects.create(
        ts=AuditEvent.objects.get(seq=2).ts - timedelta(seconds=299), actor_type="system", action="late.commit"
    )
    audit_seal()
    assert not AuditEvent.objects.filter(action=BACKDATED_ACTION).exists()
    report = verify_chain()
    assert report.ok and report.findings == []
    with override_settings(AUDIT_TS_TOLERANCE_SECONDS=60):
        assert [f.seq for f in verify_chain().findings] == [3]


def test_it_reads_anchor_lines_whatever_the_log_format_around_them(tmp_path: Path) -> None:
    good, other = "a" * 64, "b" * 64
    path = tmp_path / "shipped.log"
    path.write_text(
        f'{{"level":"info","msg":"audit.anchor seq=12 hash={good} ts=2026-12-01T10:00:00+00:00"}}\n'
        "2026-12-01 10:00:01 INFO django.request something else\n"
        f"Dec  1 10:01:00 host app[12]: INFO audit.anchor audit.anchor seq=3 hash={other} "
        "ts=2026-12-01T09:00:00+00:00\n"
        "audit.anchor seq=x hash=zz ts=garbage\n"
    )
    assert [(a.seq, a.entry_hash, a.line_no) for a in read_log_anchors(path)] == [(3, other, 3), (12, good, 1)]


def test_it_fails_the_command_on_an_unreadable_or_empty_anchors_log(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="Cannot read --anchors-log"):
        call_command("verify_audit_chain", "--anchors-log", str(tmp_path / "missing.log"), stdout=io.StringIO())
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(CommandError, match=r"holds no 'audit\.anchor' line"):
        call_command("verify_audit_chain", "--anchors-log", str(empty), stdout=io.StringIO())
