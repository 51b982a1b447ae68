"""The audit trail's hash chain and its append-only guards in the database (spec §9)."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditChainHead, AuditEvent, Outcome
from audit.services import GENESIS_HASH, audit_record, audit_seal, compute_entry_hash

pytestmark = pytest.mark.django_db


def _record_some(n: int, start: int = 0) -> list[AuditEvent]:
    return [
        audit_record(
            action="test.thing_done",
            target_type="test.Thing",
            target_id=start + i,
            office_id=7,
            outcome=Outcome.SUCCESS if i % 2 == 0 else Outcome.FAILURE,
            reason=f"reason {start + i}",
            data={"i": start + i, "amount_cents": 450 * (start + i)},
        )
        for i in range(n)
    ]


def _chain() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("seq"))


def _assert_chain_intact(events: list[AuditEvent]) -> None:
    prev = GENESIS_HASH
    for expected_seq, event in enumerate(events, start=1):
        assert event.seq == expected_seq
        assert event.prev_hash == prev
        assert event.entry_hash == compute_entry_hash(event=event, seq=event.seq, prev_hash=prev)
        prev = event.entry_hash
    head = AuditChainHead.objects.get(pk=1)
    assert (head.seq, head.entry_hash) == (len(events), prev)


def test_it_seals_entries_into_a_gapless_chain_from_one() -> None:
    recorded = _record_some(5)
    assert all(e.seq is None for e in AuditEvent.objects.all())  # not sealed before commit

    assert audit_seal() == 5

    events = _chain()
    assert [e.pk for e in events] == [e.pk for e in recorded]  # sealed in id order
    _assert_chain_intact(events)


def test_it_seals_nothing_new_the_second_time_and_continues_the_chain_later() -> None:
    _record_some(3)
    audit_seal()
    hashes = [(e.seq, e.prev_hash, e.entry_hash) for e in _chain()]

    assert audit_seal() == 0
    assert [(e.seq, e.prev_hash, e.entry_hash) for e in _chain()] == hashes

    _record_some(2, start=3)
    assert audit_seal() == 2
    events = _chain()
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[3].prev_hash == hashes[-1][2]
    _assert_chain_intact(events)


def test_it_makes_the_hash_depend_on_the_content_and_the_predecessor() -> None:
    _record_some(2)
    audit_seal()
    first, second = _chain()
    assert first.entry_hash is not None and second.entry_hash is not None
    first.reason = "edited"
    assert compute_entry_hash(event=first, seq=1, prev_hash=GENESIS_HASH) != first.entry_hash
    assert compute_entry_hash(event=second, seq=2, prev_hash=GENESIS_HASH) != second.entry_hash


def _raw_update(sql: str, params: list[object]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("reason", "nothing to see here"),
        ("action", "test.other_thing"),
        ("data", '{"amount_cents": 0}'),
        ("outcome", "success"),
        ("office_id", 8),
    ],
)
def test_it_refuses_to_update_a_sealed_entrys_content(column: str, value: object) -> None:
    _record_some(2)
    audit_seal()
    target = _chain()[1]  # outcome "failure": changing it is a real change

    with pytest.raises(DatabaseError, match="append-only"):
        _raw_update(f"UPDATE audit_auditevent SET {column} = %s WHERE id = %s", [value, target.pk])

    target_after = AuditEvent.objects.get(pk=target.pk)
    assert getattr(target_after, column) == getattr(target, column)
    _assert_chain_intact(_chain())


@pytest.mark.parametrize("column", ["entry_hash", "prev_hash", "seq"])
def test_it_refuses_to_update_a_sealed_entrys_chain_fields(column: str) -> None:
    _record_some(2)
    audit_seal()
    target = _chain()[0]
    value: object = 99 if column == "seq" else "f" * 64

    with pytest.raises(DatabaseError, match="append-only"):
        _raw_update(f"UPDATE audit_auditevent SET {column} = %s WHERE id = %s", [value, target.pk])

    _assert_chain_intact(_chain())


def test_it_refuses_to_update_an_unsealed_entrys_content() -> None:
    (event,) = _record_some(1)
    with pytest.raises(DatabaseError, match="append-only"):
        _raw_update("UPDATE audit_auditevent SET reason = %s WHERE id = %s", ["rewritten", event.pk])
    assert AuditEvent.objects.get(pk=event.pk).reason == event.reason


def test_it_refuses_an_orm_update_of_a_sealed_entry() -> None:
    _record_some(1)
    audit_seal()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.update(reason="bulk rewrite")
    _assert_chain_intact(_chain())


def test_it_refuses_to_delete_an_entry_on_postgres(on_postgres: None) -> None:
    _record_some(3)
    audit_seal()
    victim = _chain()[1]

    with pytest.raises(DatabaseError, match="append-only"):
        _raw_update("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=victim.pk).delete()

    assert AuditEvent.objects.count() == 3
    _assert_chain_intact(_chain())


def test_it_refuses_an_insert_that_carries_chain_fields():
    from django.db import IntegrityError, transaction
    from django.utils import timezone

    with pytest.raises(IntegrityError, match="unsealed"), transaction.atomic():
        AuditEvent.objects.create(ts=timezone.now(), actor_type="system", action="forged", seq=999, entry_hash="f" * 64)


def test_it_refuses_rewinding_the_head_and_editing_anchors():
    from django.db import IntegrityError, transaction

    from audit.models import AuditAnchor, AuditChainHead
    from audit.services import audit_anchor

    for i in range(3):
        audit_record(action=f"test.{i}")
    audit_seal()
    anchor = audit_anchor()
    assert anchor is not None
    with pytest.raises(IntegrityError, match="forward"), transaction.atomic():
        AuditChainHead.objects.filter(pk=1).update(seq=1)
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        AuditAnchor.objects.filter(pk=anchor.pk).update(seq=1)
