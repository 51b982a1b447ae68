"""Verifying the audit hash chain (spec §9: detect any edit, deletion, insertion or truncation).

`verify_chain` walks the sealed entries in `seq` order, a batch at a time (keyset
pagination on the unique `seq` index, so memory stays bounded for millions of rows), and
checks what the sealer (`audit.services.audit_seal`) guarantees:

- `seq` runs 1, 2, 3, … without gaps;
- every `prev_hash` is the previous entry's `entry_hash` (the first one links to genesis);
- every `entry_hash` recomputes from the entry's content, its `seq` and its `prev_hash`;
- the last entry is the one `AuditChainHead` names (seq and hash);
- every `AuditAnchor` (the head copied out of the chain) matches the entry at its seq;
- no unsealed row carries chain fields (the sealer writes all three at once).

It stops at the first break and names its kind. The kind is the most likely explanation
of what the evidence shows, not a proof: someone who can rewrite rows can also re-hash
them, and then one kind can look like another. What re-hashing cannot do is hide a break,
unless everything after it is rewritten as well, the head row included, and no anchor
covers the rewritten part — which is why anchors are copied out of the table.

Verification only reads. On PostgreSQL it runs in one REPEATABLE READ, READ ONLY
transaction (a consistent snapshot, and the database refuses any write); on SQLite, where
the project's connections open IMMEDIATE (write-locking) transactions, it reads in
autocommit and re-checks the end of the chain so that a concurrent sealer is not taken
for tampering."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from audit.models import AuditAnchor, AuditChainHead, AuditEvent
from audit.services import GENESIS_HASH, compute_entry_hash

# How far past a broken link to look for the entry that really follows the previous one
# (an inserted row sits between an entry and its genuine successor).
LOOKAHEAD = 1000


class BreakKind(enum.StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class ChainBreak:
    """The first place where the chain does not hold.

    `seq` is the chain position; `entry_id` the row found there (None when the row is
    missing, as for a deletion that left a gap or a truncated tail)."""

    kind: BreakKind
    seq: int | None
    entry_id: int | None
    detail: str

    def describe(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else ("an unsealed row" if self.entry_id else "the head")
        row = f" (entry id {self.entry_id})" if self.entry_id is not None else ""
        return f"{self.kind.value} at {where}{row}: {self.detail}"


@dataclass
class VerifyReport:
    sealed: int = 0  # sealed entries walked
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    head_present: bool = False
    anchors_checked: int = 0
    unsealed: int = 0
    stale_unsealed: int = 0  # unsealed entries older than `stale_after`
    stale_after: timedelta = timedelta(minutes=10)
    broken: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}..{last}"


def _short(value: str | None) -> str:
    return "NULL" if value is None else f"{value[:16]}…"


def _break(kind: BreakKind, event: AuditEvent | None, detail: str, *, seq: int | None = None) -> ChainBreak:
    return ChainBreak(
        kind=kind,
        seq=seq if seq is not None or event is None else event.seq,
        entry_id=None if event is None else event.pk,
        detail=detail,
    )


class _Anchors:
    """Anchors in (seq, id) order, fetched a batch at a time."""

    def __init__(self, batch_size: int) -> None:
        self._batch_size = batch_size
        self._buffer: list[AuditAnchor] = []
        self._last: tuple[int, int] | None = None
        self._done = False

    def peek(self) -> AuditAnchor | None:
        if not self._buffer and not self._done:
            qs = AuditAnchor.objects.order_by("seq", "id")
            if self._last is not None:
                seq, pk = self._last
                qs = qs.filter(Q(seq__gt=seq) | Q(seq=seq, id__gt=pk))
            self._buffer = list(qs[: self._batch_size])
            self._buffer.reverse()
            self._done = not self._buffer
        return self._buffer[-1] if self._buffer else None

    def pop(self) -> AuditAnchor:
        anchor = self._buffer.pop()
        self._last = (anchor.seq, anchor.pk)
        return anchor


class _Walk:
    def __init__(self, report: VerifyReport, batch_size: int) -> None:
        self.report = report
        self.batch_size = batch_size
        self.anchors = _Anchors(batch_size)
        self.expected_seq = 1
        self.prev_hash = GENESIS_HASH
        self.prev: AuditEvent | None = None
        self.last_seq: int | None = None  # the keyset position (None before the first row)
        self.last_good_anchor: int | None = None

    def batches(self) -> Iterator[list[AuditEvent]]:
        while True:
            qs = AuditEvent.objects.filter(seq__isnull=False).order_by("seq")
            if self.last_seq is not None:
                qs = qs.filter(seq__gt=self.last_seq)
            batch = list(qs[: self.batch_size])
            if not batch:
                return
            self.last_seq = batch[-1].seq
            yield batch

    def run(self) -> ChainBreak | None:
        for batch in self.batches():
            for event in batch:
                broken = self.check(event)
                if broken is not None:
                    return broken
                self.prev, self.prev_hash = event, event.entry_hash or ""
                self.expected_seq += 1
                self.report.sealed += 1
                self.report.last_seq, self.report.last_hash = event.seq or 0, event.entry_hash or ""
        return None

    # --- one entry ----------------------------------------------------------------------

    def check(self, event: AuditEvent) -> ChainBreak | None:
        seq = event.seq
        assert seq is not None
        if seq < self.expected_seq:  # only below 1: seq is unique and walked in order
            return _break(BreakKind.INSERTED, event, f"seq {seq} lies before the chain's first entry (seq 1)")
        if seq > self.expected_seq:
            return self.gap(event)
        if event.prev_hash != self.prev_hash:
            return self.link_broken(event)
        if event.entry_hash != compute_entry_hash(event=event, seq=seq, prev_hash=self.prev_hash):
            successor = self.later_entry_linking_to(self.prev_hash, after=seq)
            if successor is not None:
                return _break(
                    BreakKind.INSERTED,
                    event,
                    f"its hash does not recompute and entry seq {successor.seq} (id {successor.pk}) links to "
                    f"the same predecessor: this row was put into the chain",
                )
            return _break(BreakKind.EDITED, event, "its content no longer matches its entry_hash")
        return self.check_anchors(event)

    def gap(self, event: AuditEvent) -> ChainBreak:
        seq = event.seq
        assert seq is not None
        missing = _span(self.expected_seq, seq - 1)
        if event.prev_hash == self.prev_hash:
            # It still links to the entry before the hole, so nothing is missing in between:
            # its seq was changed.
            before = f"seq {self.expected_seq - 1}" if self.prev is not None else "genesis"
            return _break(BreakKind.EDITED, event, f"its seq was changed: it links to {before}, and {missing} is empty")
        return _break(
            BreakKind.DELETED,
            None,
            f"{missing} missing; the next entry, seq {seq} (id {event.pk}), links to {_short(event.prev_hash)}",
            seq=self.expected_seq,
        )

    def link_broken(self, event: AuditEvent) -> ChainBreak:
        seq = event.seq
        assert seq is not None
        successor = self.later_entry_linking_to(self.prev_hash, after=seq)
        if successor is not None:
            last = successor.seq - 1 if successor.seq is not None else seq
            rows = _span(seq, last)
            return _break(
                BreakKind.INSERTED,
                event,
                f"{rows} sit between seq {seq - 1} and its successor: entry seq {successor.seq} "
                f"(id {successor.pk}) links to seq {seq - 1}",
            )
        if event.prev_hash is None:
            return _break(BreakKind.EDITED, event, "a sealed entry without prev_hash")
        target = AuditEvent.objects.filter(entry_hash=event.prev_hash).exclude(pk=event.pk).first()
        if target is None:
            intact = event.entry_hash == compute_entry_hash(event=event, seq=seq, prev_hash=event.prev_hash)
            if intact and self.prev is not None:
                # This entry still hashes as sealed at this seq, so it was sealed right after
                # a seq-1 entry whose hash it names; the row now at seq-1 hashes differently.
                return _break(
                    BreakKind.EDITED,
                    self.prev,
                    f"entry seq {seq} (id {event.pk}) links to {_short(event.prev_hash)}, which no entry has: "
                    f"seq {seq - 1} was rewritten and re-hashed (or replaced)",
                )
            return _break(
                BreakKind.DELETED,
                event,
                f"it links to {_short(event.prev_hash)}, which no entry has: the entry before it was deleted",
            )
        if target.seq is not None and target.seq < seq - 1:
            first_extra = AuditEvent.objects.filter(seq=target.seq + 1).first()
            return _break(
                BreakKind.INSERTED,
                first_extra,
                f"entry seq {seq} (id {event.pk}) links to seq {target.seq}: "
                f"{_span(target.seq + 1, seq - 1)} does not belong between them",
                seq=target.seq + 1,
            )
        return _break(
            BreakKind.EDITED,
            event,
            f"its prev_hash was changed to that of entry id {target.pk} (seq {target.seq})",
        )

    def later_entry_linking_to(self, entry_hash: str, *, after: int) -> AuditEvent | None:
        return (
            AuditEvent.objects.filter(seq__gt=after, seq__lte=after + LOOKAHEAD, prev_hash=entry_hash)
            .order_by("seq")
            .first()
        )

    def check_anchors(self, event: AuditEvent) -> ChainBreak | None:
        seq = event.seq
        assert seq is not None
        while (anchor := self.anchors.peek()) is not None and anchor.seq <= seq:
            self.anchors.pop()
            if anchor.seq < seq:  # before seq 1: not a position in the chain
                continue
            self.report.anchors_checked += 1
            if anchor.entry_hash != event.entry_hash:
                since = f"between seq {self.last_good_anchor} and" if self.last_good_anchor else "at or before"
                return _break(
                    BreakKind.EDITED,
                    event,
                    f"anchor id {anchor.pk} of {anchor.anchored_at:%Y-%m-%d %H:%M} recorded "
                    f"{_short(anchor.entry_hash)} for this seq, the chain now has {_short(event.entry_hash)}: "
                    f"the chain was rewritten and re-hashed {since} this seq",
                )
            self.last_good_anchor = seq
        return None

    # --- the end of the chain -----------------------------------------------------------

    def check_end(self) -> ChainBreak | None:
        report = self.report
        last = report.last_seq
        if last and not report.head_present:  # the sealer creates it before sealing anything
            return ChainBreak(
                kind=BreakKind.DELETED,
                seq=None,
                entry_id=None,
                detail=f"the chain head row is missing, though seq 1..{last} are sealed",
            )
        if last < report.head_seq:
            return ChainBreak(
                kind=BreakKind.TRUNCATED,
                seq=last + 1,
                entry_id=None,
                detail=f"the head names seq {report.head_seq} ({_short(report.head_hash)}); "
                f"the chain ends at seq {last}",
            )
        if last > report.head_seq:
            first_extra = AuditEvent.objects.filter(seq=report.head_seq + 1).first()
            return _break(
                BreakKind.INSERTED,
                first_extra,
                f"the head names seq {report.head_seq} as the last entry: the sealer did not add "
                f"{_span(report.head_seq + 1, last)}",
                seq=report.head_seq + 1,
            )
        if report.last_hash != report.head_hash:
            return _break(
                BreakKind.EDITED,
                self.prev,
                f"the head names {_short(report.head_hash)} for seq {last}, the entry has {_short(report.last_hash)}: "
                f"the last entry was rewritten and re-hashed",
                seq=last,
            )
        anchor = self.anchors.peek()
        while anchor is not None and anchor.seq < 1:
            self.anchors.pop()
            anchor = self.anchors.peek()
        if anchor is not None:
            return ChainBreak(
                kind=BreakKind.TRUNCATED,
                seq=last + 1,
                entry_id=None,
                detail=f"anchor id {anchor.pk} of {anchor.anchored_at:%Y-%m-%d %H:%M} names seq {anchor.seq} "
                f"({_short(anchor.entry_hash)}); the chain ends at seq {last}",
            )
        stray = (
            AuditEvent.objects.filter(seq__isnull=True)
            .filter(Q(entry_hash__isnull=False) | Q(prev_hash__isnull=False))
            .order_by("id")
            .first()
        )
        if stray is not None:
            return _break(
                BreakKind.INSERTED,
                stray,
                "an unsealed row carries chain hashes the sealer never wrote (and would now refuse to seal)",
            )
        return None


def _read_head(report: VerifyReport) -> None:
    head = AuditChainHead.objects.filter(pk=1).first()
    report.head_present = head is not None
    report.head_seq, report.head_hash = (head.seq, head.entry_hash) if head is not None else (0, GENESIS_HASH)


def _chain_end_reached(walk: _Walk, report: VerifyReport) -> bool:
    """Whether the walk is at the end of what the head and anchors know of.

    Without a snapshot, the sealer may have added entries after the last batch was read;
    entries and head are written in one transaction, so re-reading the head and then
    looking past the last seq tells a concurrent seal from a truncated tail."""
    _read_head(report)
    anchored = AuditAnchor.objects.aggregate(top=Max("seq"))["top"] or 0
    if max(report.head_seq, anchored) <= report.last_seq:
        return True
    return not AuditEvent.objects.filter(seq__gt=walk.last_seq if walk.last_seq is not None else 0).exists()


@contextlib.contextmanager
def _read_only_snapshot() -> Iterator[None]:
    if connection.in_atomic_block or connection.vendor != "postgresql":
        yield  # inside the caller's transaction, or SQLite (see the module docstring)
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def verify_chain(*, batch_size: int = 5000, stale_after: timedelta = timedelta(minutes=10)) -> VerifyReport:
    """Check the sealed audit chain end to end; read-only (spec §9, `verify_audit_chain`).

    Returns a report whose `broken` names the first break (kind, seq, entry id) or is None.
    Unsealed entries older than `stale_after` are counted as a warning, not a break: the
    sealer runs after every commit and every minute, so old unsealed rows mean it is stuck."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = VerifyReport(stale_after=stale_after)
    with _read_only_snapshot():
        _read_head(report)
        walk = _Walk(report, batch_size)
        while True:
            broken = walk.run()
            if broken is not None or _chain_end_reached(walk, report):
                break
        report.broken = broken or walk.check_end()
        unsealed = AuditEvent.objects.filter(seq__isnull=True)
        report.unsealed = unsealed.count()
        report.stale_unsealed = unsealed.filter(ts__lt=timezone.now() - stale_after).count()
    return report
