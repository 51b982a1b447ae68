"""Verifying the audit hash chain (spec §9: detect any edit, deletion, insertion or truncation).

`verify_chain` walks the sealed entries in `seq` order, a batch at a time (keyset
pagination on the unique `seq` index, so memory stays bounded for millions of rows), and
checks what the sealer (`audit.services.audit_seal`) guarantees:

- `seq` runs 1, 2, 3, … without gaps;
- every `prev_hash` is the previous entry's `entry_hash` (the first one links to genesis);
- every `entry_hash` recomputes from the entry's content, its `seq` and its `prev_hash`;
- the last entry is the one `AuditChainHead` names (seq and hash);
- every `AuditAnchor` (the head copied out of the chain) matches the entry at its seq;
- no unsealed row carries chain fields (the sealer writes all three at once);
- every entry's HMAC verifies with the key its `key_id` names (audit/keys.py); `legacy`
  (unkeyed SHA-256, sealed before keys existed) only as the chain's prefix and, with
  `AUDIT_LEGACY_MAX_SEQ` set, not past it — so a tail re-hashed without the key, keyed or
  "legacy", is reported;
- every anchor line of the application log (`--anchors-log`: `audit.anchor seq=… hash=…`),
  kept outside the database, matches the entry at its seq, and none lies past the chain's
  end (a TRUNCATE of the audit, head and anchor tables, or a restore that lost the last
  entries);
- on PostgreSQL, the high-water mark sequence `audit_chain_hwm` (which TRUNCATE does not
  reset) is not past the chain's end.

Timestamps that run backwards along `seq` by more than `AUDIT_TS_TOLERANCE_SECONDS` (the
sealer records them as `audit.entry_backdated` findings) are reported as findings: the
chain holds, but those entries' times are not credible.

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
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from audit.keys import LEGACY_KEY_ID, UnknownAuditKey
from audit.models import AuditAnchor, AuditChainHead, AuditEvent
from audit.services import GENESIS_HASH, HWM_SEQUENCE, compute_entry_hash, ts_tolerance

# How far past a broken link to look for the entry that really follows the previous one
# (an inserted row sits between an entry and its genuine successor).
LOOKAHEAD = 1000


class BreakKind(enum.StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    UNKNOWN_KEY = "unknown key"


@dataclass(frozen=True)
class LogAnchor:
    """An anchor line read back from the application log."""

    seq: int
    entry_hash: str
    ts: str
    line_no: int


ANCHOR_LINE_RE = re.compile(r"audit\.anchor seq=(\d+) hash=([0-9a-f]{64}) ts=(\S+)")


def read_log_anchors(path: str | Path) -> list[LogAnchor]:
    """Every `audit.anchor seq=… hash=… ts=…` line of a log file, in seq order (other lines,
    whatever the log's formatter put around the message, are ignored)."""
    anchors: list[LogAnchor] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            match = ANCHOR_LINE_RE.search(line)
            if match:
                anchors.append(LogAnchor(int(match[1]), match[2], match[3], line_no))
    anchors.sort(key=lambda a: (a.seq, a.line_no))
    return anchors


@dataclass(frozen=True)
class Finding:
    """Not a break of the chain, but something an auditor must look at."""

    seq: int
    entry_id: int
    detail: str

    def describe(self) -> str:
        return f"seq {self.seq} (entry id {self.entry_id}): {self.detail}"


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
    log_anchors_checked: int = 0
    hwm: int | None = None  # PostgreSQL's audit_chain_hwm; None elsewhere
    legacy_entries: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
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


MAX_FINDINGS_LISTED = 100


class _Walk:
    def __init__(self, report: VerifyReport, batch_size: int, log_anchors: list[LogAnchor] | None = None) -> None:
        self.report = report
        self.batch_size = batch_size
        self.anchors = _Anchors(batch_size)
        self.log_anchors = list(reversed(log_anchors or []))  # popped from the end, seq order
        self.keyed_seen: int | None = None  # seq of the first keyed entry
        self.chain_ts: datetime | None = None
        self.tolerance = ts_tolerance()
        self.legacy_max_seq: int | None = settings.AUDIT_LEGACY_MAX_SEQ
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
        scheme = self.check_scheme(event)
        if scheme is not None:
            return scheme
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
        self.check_ts(event)
        return self.check_anchors(event) or self.check_log_anchors(event)

    def check_scheme(self, event: AuditEvent) -> ChainBreak | None:
        """The key the entry names exists, and `legacy` only where legacy entries can be."""
        seq = event.seq
        assert seq is not None
        if event.key_id == LEGACY_KEY_ID:
            self.report.legacy_entries += 1
            if self.keyed_seen is not None:
                return _break(
                    BreakKind.EDITED,
                    event,
                    f"it claims the unkeyed legacy scheme after keyed entries (from seq {self.keyed_seen}): "
                    f"it was re-hashed without the key",
                )
            if self.legacy_max_seq is not None and seq > self.legacy_max_seq:
                return _break(
                    BreakKind.EDITED,
                    event,
                    f"it claims the unkeyed legacy scheme past AUDIT_LEGACY_MAX_SEQ={self.legacy_max_seq}: "
                    f"it was re-hashed without the key",
                )
            return None
        if self.keyed_seen is None:
            self.keyed_seen = seq
        try:
            compute_entry_hash(event=event, seq=seq, prev_hash="")
        except UnknownAuditKey:
            return _break(
                BreakKind.UNKNOWN_KEY,
                event,
                f"it names the key id {event.key_id!r}, which AUDIT_HMAC_KEYS does not hold: "
                f"keep retired keys after the current one (or the entry was forged)",
            )
        return None

    def check_ts(self, event: AuditEvent) -> None:
        """Time must not run backwards along the chain beyond the tolerance (a finding)."""
        if self.chain_ts is not None and event.ts < self.chain_ts - self.tolerance:
            self.report.findings_total += 1
            if len(self.report.findings) < MAX_FINDINGS_LISTED:
                behind = self.chain_ts - event.ts
                self.report.findings.append(
                    Finding(
                        seq=event.seq or 0,
                        entry_id=event.pk,
                        detail=f"backdated: its ts {event.ts.isoformat()} lies {behind} before an earlier "
                        f"entry's ({self.chain_ts.isoformat()}); tolerance {self.tolerance}",
                    )
                )
            return
        self.chain_ts = event.ts if self.chain_ts is None else max(self.chain_ts, event.ts)

    def check_log_anchors(self, event: AuditEvent) -> ChainBreak | None:
        seq = event.seq
        assert seq is not None
        while self.log_anchors and self.log_anchors[-1].seq <= seq:
            anchor = self.log_anchors.pop()
            if anchor.seq < seq:  # before seq 1
                continue
            self.report.log_anchors_checked += 1
            if anchor.entry_hash != event.entry_hash:
                return _break(
                    BreakKind.EDITED,
                    event,
                    f"the anchor logged at {anchor.ts} (log line {anchor.line_no}) recorded "
                    f"{_short(anchor.entry_hash)} for this seq, the chain now has {_short(event.entry_hash)}: "
                    f"the chain was rewritten (or replaced) at or before this seq",
                )
        return None

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
            try:
                intact = event.entry_hash == compute_entry_hash(event=event, seq=seq, prev_hash=event.prev_hash)
            except UnknownAuditKey:
                intact = False
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
        while self.log_anchors and self.log_anchors[-1].seq < 1:
            self.log_anchors.pop()
        if self.log_anchors:
            logged = self.log_anchors[0]  # the highest seq the log knows of
            return ChainBreak(
                kind=BreakKind.TRUNCATED,
                seq=last + 1,
                entry_id=None,
                detail=f"the application log anchored seq {logged.seq} ({_short(logged.entry_hash)}) at {logged.ts} "
                f"(log line {logged.line_no}); the chain ends at seq {last}: entries were deleted, truncated "
                f"or lost in a restore",
            )
        if report.hwm is not None and report.hwm > last:
            return ChainBreak(
                kind=BreakKind.TRUNCATED,
                seq=last + 1,
                entry_id=None,
                detail=f"the high-water mark sequence {HWM_SEQUENCE} (which TRUNCATE does not reset) says seq "
                f"{report.hwm} was sealed; the chain, its head and its anchors end at seq {last}",
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


def _read_hwm(report: VerifyReport) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:  # NULL when the sequence is missing
        cursor.execute("SELECT pg_sequence_last_value(to_regclass(%s))", [HWM_SEQUENCE])
        row = cursor.fetchone()
        report.hwm = int(row[0]) if row is not None and row[0] is not None else None


def verify_chain(
    *,
    batch_size: int = 5000,
    stale_after: timedelta = timedelta(minutes=10),
    log_anchors: list[LogAnchor] | None = None,
) -> VerifyReport:
    """Check the sealed audit chain end to end; read-only (spec §9, `verify_audit_chain`).

    Returns a report whose `broken` names the first break (kind, seq, entry id) or is None,
    and whose `findings` list backdated entries. `log_anchors` (from `read_log_anchors`) are
    the anchors kept outside the database. Unsealed entries older than `stale_after` are
    counted as a warning, not a break: the sealer runs after every commit and every minute,
    so old unsealed rows mean it is stuck."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = VerifyReport(stale_after=stale_after)
    # Before the snapshot: the sealer raises the mark only after its commit, so a mark read
    # first never lies past what the (later) snapshot sees.
    _read_hwm(report)
    with _read_only_snapshot():
        _read_head(report)
        walk = _Walk(report, batch_size, log_anchors)
        while True:
            broken = walk.run()
            if broken is not None or _chain_end_reached(walk, report):
                break
        report.broken = broken or walk.check_end()
        unsealed = AuditEvent.objects.filter(seq__isnull=True)
        report.unsealed = unsealed.count()
        report.stale_unsealed = unsealed.filter(ts__lt=timezone.now() - stale_after).count()
    return report
