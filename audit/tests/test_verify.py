"""`verify_chain` and `manage.py verify_audit_chain` detect any edit, deletion, insertion or
truncation of the audit trail, and name the first broken entry (spec §9).

What the tamper tests simulate: an attacker with the database owner's rights, who can
switch the append-only guards off — on SQLite by dropping the UPDATE trigger
(`DROP TRIGGER audit_event_append_only`), on PostgreSQL with `ALTER TABLE audit_auditevent
DISABLE TRIGGER USER` (which also lifts the DELETE guard) — and then edits, deletes,
inserts or renumbers rows with raw SQL, and may rewind the head row. Both statements are
transactional DDL, so they are rolled back with each test's transaction (proved below by
rolling one back in a savepoint and finding the guard working again).

The chain used everywhere: 8 entries, sealed as 1..5 then 6..8, with an anchor after each
seal (anchors at seq 5 and seq 8)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from audit.keys import current_key
from audit.models import AuditAnchor, AuditChainHead, AuditEvent, Outcome
from audit.services import GENESIS_HASH, audit_anchor, audit_record, audit_seal, compute_entry_hash
from audit.verify import BreakKind, VerifyReport, verify_chain
from billing.tests.support.factories import at

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


# --- Building a chain and tampering with it --------------------------------------------


def _record(i: int) -> AuditEvent:
    with at(T0 + timedelta(minutes=i)):
        return audit_record(
            action="invoice.finalized" if i % 2 else "patient.activated",
            target_type="billing.Invoice",
            target_id=100 + i,
            office_id=1 + i % 2,
            outcome=Outcome.SUCCESS,
            reason=f"cycle {i}",
            data={"i": i, "total_cents": 450 * i},
        )


@pytest.fixture
def chain() -> list[AuditEvent]:
    """Eight sealed entries (seq 1..8), anchored at seq 5 and seq 8."""
    for i in range(1, 6):
        _record(i)
    audit_seal()
    audit_anchor()
    for i in range(6, 9):
        _record(i)
    audit_seal()
    audit_anchor()
    events = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in events] == list(range(1, 9))
    assert list(AuditAnchor.objects.order_by("seq").values_list("seq", flat=True)) == [5, 8]
    return events


@pytest.fixture(params=[2, 5000], ids=["batches-of-2", "one-batch"])
def batch_size(request: pytest.FixtureRequest) -> int:
    """Every tamper case is verified with batches that split the chain and with one batch."""
    return int(request.param)


def sql(statement: str, params: list[Any] | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.rowcount


def guards_off() -> None:
    """What a database owner can do (see the module docstring); undone by the rollback."""
    if connection.vendor == "sqlite":  # SQLite has no DELETE guards to lift
        for trigger in (
            "audit_event_append_only",
            "audit_event_insert_unsealed",
            "audit_head_only_forward",
            "audit_anchor_append_only",
        ):
            sql(f"DROP TRIGGER {trigger}")
    else:
        for table in ("audit_auditevent", "audit_auditchainhead", "audit_auditanchor"):
            sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")


def renumber(*, from_seq: int, by: int) -> None:
    """Move entries seq >= from_seq by `by`, one row at a time so `seq` stays unique."""
    seqs = list(AuditEvent.objects.filter(seq__gte=from_seq).order_by("seq").values_list("seq", flat=True))
    for seq in reversed(seqs) if by > 0 else seqs:
        sql("UPDATE audit_auditevent SET seq = %s WHERE seq = %s", [seq + by, seq])


def forge(*, seq: int | None, prev_hash: str | None, entry_hash: str | None = None) -> AuditEvent:
    """A row made to look sealed. The content is inserted unsealed (INSERT is not guarded),
    then given chain fields: a correct hash unless `entry_hash` is given."""
    with at(T0 + timedelta(minutes=30)):
        forged = AuditEvent.objects.create(
            ts=T0 + timedelta(minutes=30),
            actor_type="system",
            action="invoice.voided",
            target_type="billing.Invoice",
            target_id="999",
            office_id=1,
            reason="forged",
        )
    forged = AuditEvent.objects.get(pk=forged.pk)  # as stored (the hash is computed from that)
    forged.key_id = current_key()[0]  # the worst case: a forger who holds the key too
    if entry_hash is None and seq is not None and prev_hash is not None:
        entry_hash = compute_entry_hash(event=forged, seq=seq, prev_hash=prev_hash)
    sql(
        "UPDATE audit_auditevent SET seq = %s, prev_hash = %s, entry_hash = %s, key_id = %s WHERE id = %s",
        [seq, prev_hash, entry_hash, forged.key_id, forged.pk],
    )
    return forged


def rewind_head(to: AuditEvent) -> None:
    sql("UPDATE audit_auditchainhead SET seq = %s, entry_hash = %s WHERE id = 1", [to.seq, to.entry_hash])


def rehash(from_seq: int) -> None:
    """Re-link and re-hash every entry from `from_seq` on, and move the head to match."""
    prev = AuditEvent.objects.get(seq=from_seq - 1).entry_hash if from_seq > 1 else GENESIS_HASH
    for event in AuditEvent.objects.filter(seq__gte=from_seq).order_by("seq"):
        assert event.seq is not None and prev is not None
        new = compute_entry_hash(event=event, seq=event.seq, prev_hash=prev)
        sql("UPDATE audit_auditevent SET prev_hash = %s, entry_hash = %s WHERE id = %s", [prev, new, event.pk])
        prev = new
    sql("UPDATE audit_auditchainhead SET entry_hash = %s WHERE id = 1", [prev])


def assert_broken(report: VerifyReport, kind: BreakKind, seq: int | None, entry_id: int | None) -> None:
    assert report.broken is not None, "the chain verified OK"
    assert not report.ok
    assert (report.broken.kind, report.broken.seq, report.broken.entry_id) == (kind, seq, entry_id), (
        report.broken.describe()
    )


# --- An intact chain --------------------------------------------------------------------


def test_it_verifies_an_untouched_chain(chain: list[AuditEvent], batch_size: int) -> None:
    report = verify_chain(batch_size=batch_size)

    assert report.ok, report.broken and report.broken.describe()
    assert (report.sealed, report.last_seq, report.last_hash) == (8, 8, chain[-1].entry_hash)
    assert (report.head_seq, report.head_hash) == (8, chain[-1].entry_hash)
    assert report.anchors_checked == 2
    assert (report.unsealed, report.stale_unsealed) == (0, 0)


def test_it_verifies_an_empty_trail() -> None:
    report = verify_chain()

    assert report.ok
    assert (report.sealed, report.head_seq, report.head_hash) == (0, 0, GENESIS_HASH)


def test_it_counts_old_unsealed_entries_as_a_warning_not_a_break(chain: list[AuditEvent]) -> None:
    _record(40)  # T0 + 40 min, never sealed (the test's transaction never commits)
    _record(75)  # T0 + 75 min

    with at(T0 + timedelta(minutes=80)):
        report = verify_chain(stale_after=timedelta(minutes=10))

    assert report.ok
    assert (report.unsealed, report.stale_unsealed) == (2, 1)


def test_it_only_reads(chain: list[AuditEvent]) -> None:
    _record(9)  # pending: verification must not seal it
    head_before = AuditChainHead.objects.values("seq", "entry_hash").get()
    rows_before = list(AuditEvent.objects.order_by("id").values())

    verify_chain(batch_size=3)

    assert AuditChainHead.objects.values("seq", "entry_hash").get() == head_before
    assert list(AuditEvent.objects.order_by("id").values()) == rows_before
    assert AuditAnchor.objects.count() == 2


def test_it_reads_the_chain_in_batches_of_bounded_size() -> None:
    for i in range(40):
        _record(i)
    audit_seal()

    with CaptureQueriesContext(connection) as queries:
        report = verify_chain(batch_size=10)

    assert report.ok and report.sealed == 40
    event_reads = [q["sql"] for q in queries.captured_queries if 'FROM "audit_auditevent"' in q["sql"]]
    assert all("LIMIT" in q or "COUNT(" in q for q in event_reads)  # never the whole table at once
    assert sum("LIMIT 10" in q for q in event_reads) == 5  # 4 full batches and the empty one
    hwm_read = 1 if connection.vendor == "postgresql" else 0  # the high-water mark sequence
    assert len(queries.captured_queries) <= 12 + hwm_read


@pytest.mark.django_db(transaction=True)
def test_it_verifies_outside_a_transaction_in_a_snapshot_of_its_own() -> None:
    """Committed for real: each record seals after its commit; on PostgreSQL the
    verification runs in its own REPEATABLE READ, READ ONLY transaction."""
    for i in range(3):
        _record(i)
    audit_anchor()

    report = verify_chain()

    assert report.ok, report.broken and report.broken.describe()
    assert (report.sealed, report.head_seq, report.anchors_checked) == (3, 3, 1)


# --- The guard bypass the tamper tests rely on ------------------------------------------


def test_it_gets_the_guards_back_when_the_bypass_is_rolled_back(chain: list[AuditEvent]) -> None:
    with transaction.atomic():
        guards_off()
        assert sql("UPDATE audit_auditevent SET reason = 'x' WHERE seq = 1") == 1
        transaction.set_rollback(True)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        sql("UPDATE audit_auditevent SET reason = 'x' WHERE seq = 1")
    assert AuditEvent.objects.get(seq=1).reason == "cycle 1"
    assert verify_chain().ok


# --- (a) edits --------------------------------------------------------------------------


def test_it_reports_an_edited_entry(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    sql("UPDATE audit_auditevent SET reason = 'nothing happened' WHERE seq = 4")

    assert_broken(verify_chain(batch_size=batch_size), BreakKind.EDITED, 4, chain[3].pk)


@pytest.mark.parametrize(
    ("column", "value"),
    [("office_id", 2), ("outcome", "failure"), ("data", '{"i": 4, "total_cents": 0}'), ("ts", None)],
)
def test_it_reports_an_edit_of_any_hashed_field(chain: list[AuditEvent], column: str, value: Any) -> None:
    guards_off()
    if column == "ts":
        value = connection.ops.adapt_datetimefield_value(T0 - timedelta(days=1))
    sql(f"UPDATE audit_auditevent SET {column} = %s WHERE seq = 6", [value])

    assert_broken(verify_chain(), BreakKind.EDITED, 6, chain[5].pk)


def test_it_reports_an_edited_entry_even_when_its_hash_was_recomputed(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    target = chain[3]
    target.reason = "nothing happened"
    new_hash = compute_entry_hash(event=target, seq=4, prev_hash=chain[2].entry_hash or "")
    sql("UPDATE audit_auditevent SET reason = %s, entry_hash = %s WHERE seq = 4", [target.reason, new_hash])

    report = verify_chain(batch_size=batch_size)

    assert_broken(report, BreakKind.EDITED, 4, target.pk)  # seq 5 still names the old hash
    assert report.broken is not None and "seq 5" in report.broken.detail


def test_it_reports_a_chain_rewritten_from_an_entry_on_through_the_anchor(
    chain: list[AuditEvent], batch_size: int
) -> None:
    """Edit seq 3, re-hash everything after it and move the head: consistent in itself,
    but the anchor copied out at seq 5 no longer matches."""
    guards_off()
    sql("UPDATE audit_auditevent SET reason = 'nothing happened' WHERE seq = 3")
    rehash(from_seq=3)

    report = verify_chain(batch_size=batch_size)

    assert_broken(report, BreakKind.EDITED, 5, chain[4].pk)
    assert report.broken is not None and "anchor" in report.broken.detail


def test_it_reports_a_changed_seq(chain: list[AuditEvent]) -> None:
    guards_off()
    sql("UPDATE audit_auditevent SET seq = 20 WHERE seq = 8")

    assert_broken(verify_chain(), BreakKind.EDITED, 20, chain[7].pk)


# --- (b) deletions ----------------------------------------------------------------------


def test_it_reports_an_entry_deleted_from_the_middle(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    assert sql("DELETE FROM audit_auditevent WHERE seq = 4") == 1

    report = verify_chain(batch_size=batch_size)

    assert_broken(report, BreakKind.DELETED, 4, None)  # the row at seq 4 is gone
    assert report.broken is not None and f"id {chain[4].pk}" in report.broken.detail  # seq 5 is named


def test_it_reports_several_entries_deleted_from_the_start(chain: list[AuditEvent]) -> None:
    guards_off()
    sql("DELETE FROM audit_auditevent WHERE seq <= 2")

    assert_broken(verify_chain(), BreakKind.DELETED, 1, None)


def test_it_reports_a_deletion_hidden_by_renumbering(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    sql("DELETE FROM audit_auditevent WHERE seq = 4")
    renumber(from_seq=5, by=-1)
    rewind_head(to=AuditEvent.objects.get(seq=7))

    assert_broken(verify_chain(batch_size=batch_size), BreakKind.DELETED, 4, chain[4].pk)


# --- (c) insertions ---------------------------------------------------------------------


def test_it_reports_a_forged_entry_appended_after_the_head(chain: list[AuditEvent], batch_size: int) -> None:
    """Correctly linked and hashed, and no guard had to be lifted: only the head and the
    anchors, kept by the sealer, tell it apart."""
    forged = forge(seq=9, prev_hash=chain[-1].entry_hash)

    assert_broken(verify_chain(batch_size=batch_size), BreakKind.INSERTED, 9, forged.pk)


def test_it_reports_a_forged_entry_put_into_the_middle(chain: list[AuditEvent], batch_size: int) -> None:
    """Seq 4..8 moved up by one; the forged row at seq 4 links to seq 3 and hashes right."""
    guards_off()
    renumber(from_seq=4, by=1)
    forged = forge(seq=4, prev_hash=chain[2].entry_hash)

    report = verify_chain(batch_size=batch_size)

    assert_broken(report, BreakKind.INSERTED, 4, forged.pk)
    assert report.broken is not None and f"id {chain[3].pk}" in report.broken.detail  # the real successor


def test_it_reports_a_carelessly_forged_entry_in_the_middle(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    renumber(from_seq=4, by=1)
    forged = forge(seq=4, prev_hash=chain[2].entry_hash, entry_hash="f" * 64)

    assert_broken(verify_chain(batch_size=batch_size), BreakKind.INSERTED, 4, forged.pk)


def test_it_reports_a_forged_entry_with_an_invented_link(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    renumber(from_seq=4, by=1)
    forged = forge(seq=4, prev_hash="e" * 64)

    assert_broken(verify_chain(batch_size=batch_size), BreakKind.INSERTED, 4, forged.pk)


def test_it_reports_a_forged_entry_before_the_first(chain: list[AuditEvent]) -> None:
    forged = forge(seq=0, prev_hash=GENESIS_HASH)

    assert_broken(verify_chain(), BreakKind.INSERTED, 0, forged.pk)


def test_it_reports_an_unsealed_row_that_carries_chain_hashes(chain: list[AuditEvent]) -> None:
    forged = forge(seq=None, prev_hash=chain[-1].entry_hash, entry_hash="d" * 64)

    assert_broken(verify_chain(), BreakKind.INSERTED, None, forged.pk)


# --- (d) truncation ---------------------------------------------------------------------


def test_it_reports_a_deleted_tail(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    assert sql("DELETE FROM audit_auditevent WHERE seq >= 7") == 2

    report = verify_chain(batch_size=batch_size)

    assert_broken(report, BreakKind.TRUNCATED, 7, None)
    assert report.broken is not None and "head" in report.broken.detail


def test_it_reports_a_deleted_tail_even_when_the_head_was_rewound(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    sql("DELETE FROM audit_auditevent WHERE seq >= 7")
    rewind_head(to=chain[5])

    report = verify_chain(batch_size=batch_size)

    assert_broken(report, BreakKind.TRUNCATED, 7, None)
    assert report.broken is not None and "anchor" in report.broken.detail  # the anchor at seq 8


def test_it_reports_the_first_break_when_there_are_several(chain: list[AuditEvent], batch_size: int) -> None:
    guards_off()
    sql("DELETE FROM audit_auditevent WHERE seq >= 7")
    sql("UPDATE audit_auditevent SET reason = 'x' WHERE seq = 5")
    sql("DELETE FROM audit_auditevent WHERE seq = 3")

    assert_broken(verify_chain(batch_size=batch_size), BreakKind.DELETED, 3, None)


# --- manage.py verify_audit_chain ---------------------------------------------------------


def _command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("verify_audit_chain", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_prints_ok_with_the_counts_and_the_head_hash(chain: list[AuditEvent]) -> None:
    out, err = _command()

    assert out.startswith("OK: audit chain intact: 8 sealed entries (seq 1..8)")
    assert chain[-1].entry_hash in out and "2 anchors matched" in out
    assert err == ""


def test_it_fails_naming_the_first_broken_entry_and_the_kind(chain: list[AuditEvent]) -> None:
    guards_off()
    sql("UPDATE audit_auditevent SET reason = 'nothing happened' WHERE seq = 4")

    with pytest.raises(CommandError, match=rf"BROKEN — edited at seq 4 \(entry id {chain[3].pk}\)") as failure:
        _command()
    assert failure.value.returncode == 1  # manage.py exits with it


def test_it_fails_on_a_truncated_chain(chain: list[AuditEvent]) -> None:
    guards_off()
    sql("DELETE FROM audit_auditevent WHERE seq = 8")

    with pytest.raises(CommandError, match="truncated at seq 8"):
        _command()


def test_it_seals_pending_entries_first_when_asked(chain: list[AuditEvent]) -> None:
    _record(9)
    _record(10)

    out, _ = _command()
    assert "8 sealed entries" in out and "2 unsealed" in out
    assert AuditEvent.objects.filter(seq__isnull=True).count() == 2  # verifying alone wrote nothing

    out, _ = _command("--seal-first")
    assert "Sealed 2 pending entries first." in out
    assert "10 sealed entries (seq 1..10)" in out and "0 unsealed" in out


def test_it_warns_about_stale_unsealed_entries(chain: list[AuditEvent]) -> None:
    _record(9)

    with at(T0 + timedelta(hours=2)):
        out, err = _command("--stale-minutes", "30")

    assert out.startswith("OK")
    assert "1 unsealed entry older than 30 minutes" in err


def test_it_reports_a_deleted_head_row(chain: list[AuditEvent]) -> None:
    guards_off()
    sql("DELETE FROM audit_auditchainhead")

    report = verify_chain()

    assert_broken(report, BreakKind.DELETED, None, None)
    assert report.broken is not None and "head row is missing" in report.broken.describe()
