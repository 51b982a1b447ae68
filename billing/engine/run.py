"""The billing run (spec §6): every due office, every boundary it has to process, in
order, one transaction per office and cycle. Idempotent, resumable, safe concurrently:
each step locks the office and re-reads its state, so a second run finds nothing to do."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from audit.models import Outcome
from audit.services import audit_record, deferred_sealing
from billing.engine.advance import advance_one
from billing.engine.cycles import next_boundary_after, zone
from billing.engine.office import AdvanceStats, lock_office
from billing.models import (
    BillingRun,
    BillingRunChunk,
    BillingRunError,
    BillingRunStatus,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
)
from config.errors import ApplicationError
from offices.models import Office, SubscriptionStatus

logger = logging.getLogger("billing.run")

# A run's as-of may be this far ahead of the clock (clock skew between machines).
AS_OF_TOLERANCE = timedelta(seconds=5)
# How far ahead a dry run may look (each month ahead is one more boundary per office).
PREVIEW_HORIZON = timedelta(days=366)


def validate_as_of(as_of: datetime | str | None, *, allow_future: bool = False) -> datetime:
    """An aware as-of at or before now (5 s of clock skew allowed, then clamped) (spec §6).

    With `allow_future` (the dry run only, spec §10) the as-of may also be up to
    PREVIEW_HORIZON ahead: the run is rolled back, so it may look at boundaries that have
    not come yet, taking the history as it stands now (patients active now stay active)."""
    now = timezone.now()
    if as_of is None:
        return now
    if isinstance(as_of, str):
        try:
            as_of = datetime.fromisoformat(as_of)
        except ValueError as exc:
            raise ApplicationError(f"--as-of {as_of!r} is not an ISO 8601 date-time.") from exc
    if timezone.is_naive(as_of):
        raise ApplicationError(
            f"--as-of {as_of.isoformat()} has no UTC offset; give one, e.g. 2026-04-10T06:00:00+00:00."
        )
    if as_of > now + AS_OF_TOLERANCE:
        if not allow_future:
            raise ApplicationError(
                f"--as-of {as_of.isoformat()} is in the future; a run may only bill what has happened."
            )
        if as_of > now + PREVIEW_HORIZON:
            raise ApplicationError(
                f"--as-of {as_of.isoformat()} is more than {PREVIEW_HORIZON.days} days ahead; "
                "a dry run looks ahead at most that far."
            )
        return as_of
    # Within the tolerance, bill only up to now: finalizing a cycle before it has ended
    # would put a later activation stamped inside it on the next cycle instead.
    return min(as_of, now)


def offices_due(*, as_of: datetime, office_ids: Iterable[int] | None = None) -> list[int]:
    """Offices with a boundary at or before `as_of`: a draft cycle that has ended, or a
    trial that has ended. Two indexed queries, whatever the number of offices."""
    drafts = Invoice.objects.filter(kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT, period_end__lte=as_of)
    trials = Office.objects.filter(subscription_status=SubscriptionStatus.TRIALING, trial_ends_at__lte=as_of)
    if office_ids is not None:
        ids = list(office_ids)
        drafts = drafts.filter(office_id__in=ids)
        trials = trials.filter(pk__in=ids)
    due = set(drafts.values_list("office_id", flat=True)) | set(trials.values_list("pk", flat=True))
    return sorted(due)


def next_boundary(*, office_ids: Iterable[int], after: datetime | None = None) -> datetime | None:
    """The earliest boundary strictly after `after` (default: now) among these offices — a
    trial end, or the end of a billing cycle — or None if none of them has one (no
    subscription, canceled, or ending at a boundary already passed). Two queries."""
    after = after or timezone.now()
    ids = list(office_ids)
    drafts = dict(
        Invoice.objects.filter(office_id__in=ids, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT).values_list(
            "office_id", "period_end"
        )
    )
    found: list[datetime] = []
    for office in Office.objects.filter(pk__in=ids):
        anchor = office.billing_cycle_anchor_date
        if office.subscription_status == SubscriptionStatus.TRIALING and office.trial_ends_at is not None:
            if office.trial_ends_at > after:
                found.append(office.trial_ends_at)
                continue
        elif office.pk not in drafts:
            continue  # nothing is billed until it subscribes again
        end = drafts.get(office.pk)
        if end is not None and end > after:
            found.append(end)
        elif office.cancel_at_period_end:
            continue  # its last cycle has ended; the run cancels it there
        elif anchor is not None:
            # The boundaries already due come first; the next one after them is on the anchor.
            found.append(next_boundary_after(anchor, after, zone(office.timezone)))
    return min(found, default=None)


def billing_run_start(
    *,
    as_of: datetime,
    trigger: str,
    office_ids: Sequence[int] | None,
    offices_due_count: int,
    chunks: Sequence[Sequence[int]],
) -> BillingRun:
    """Record a run, its due offices and its chunks (one row each); audited (spec §6)."""
    run = BillingRun.objects.create(
        as_of=as_of,
        trigger=trigger,
        office_filter=list(office_ids) if office_ids is not None else None,
        offices_due=offices_due_count,
        chunks_total=len(chunks),
    )
    BillingRunChunk.objects.bulk_create(
        [BillingRunChunk(run=run, seq=seq, office_ids=list(ids)) for seq, ids in enumerate(chunks)]
    )
    audit_record(
        action="billing_run.started",
        target=run,
        data={"as_of": as_of.isoformat(), "trigger": trigger, "offices_due": offices_due_count},
    )
    return run


def _count_step(run_id: int, step: AdvanceStats) -> None:
    """Add one step's work to its run, in the step's own transaction: a delivery killed
    mid-chunk has counted exactly what it committed (lock order: office, number row, run)."""
    if step.finalized or step.opened or step.lines:
        BillingRun.objects.filter(pk=run_id).update(
            invoices_finalized=F("invoices_finalized") + step.finalized,
            invoices_opened=F("invoices_opened") + step.opened,
            lines_created=F("lines_created") + step.lines,
            amount_finalized_cents=F("amount_finalized_cents") + step.amount_finalized_cents,
        )


def process_office(*, office_id: int, as_of: datetime, run_id: int | None = None) -> AdvanceStats:
    """Every boundary of one office up to `as_of`, one transaction per boundary. A step
    says where the office's next boundary is, so no extra transaction is spent finding
    that nothing is left. With `run_id`, each step's work is added to that run as it commits."""
    total = AdvanceStats()
    while True:
        step = AdvanceStats()
        with transaction.atomic():
            office = lock_office(office_id)
            progressed = advance_one(office=office, as_of=as_of, stats=step)
            if run_id is not None:
                _count_step(run_id, step)
        total.add(step)
        if not progressed or step.next_boundary is None or step.next_boundary > as_of:
            return total


def _chunk_of(run: BillingRun, office_ids: Sequence[int], seq: int | None) -> BillingRunChunk | None:
    chunks = BillingRunChunk.objects.filter(run=run)
    if seq is not None:
        return chunks.filter(seq=seq).first()
    wanted = list(office_ids)  # a message queued before chunks were numbered
    return next((c for c in chunks.filter(done_at__isnull=True) if c.office_ids == wanted), None)


def billing_run_process(
    *,
    run: BillingRun,
    office_ids: Sequence[int],
    progress: Callable[[int, AdvanceStats], None] | None = None,
    chunk_seq: int | None = None,
) -> AdvanceStats:
    """Process a chunk of offices for `run`. A failing office is recorded and skipped (its
    open transaction rolled back; the next run retries it); the others go on.

    Safe to deliver twice, or to be killed: the work figures are added step by step in each
    step's transaction (an invoice is finalized by one delivery only, under its office's
    lock), and the chunk is marked done once, by a conditional update, which alone counts
    its offices and errors."""
    chunk_row = _chunk_of(run, office_ids, chunk_seq)
    if chunk_row is not None:
        BillingRunChunk.objects.filter(pk=chunk_row.pk).update(deliveries=F("deliveries") + 1)
    chunk = AdvanceStats()
    done = errors = 0
    with deferred_sealing():
        done, errors = _process_all(run=run, office_ids=office_ids, chunk=chunk, progress=progress)
    with transaction.atomic():
        first_to_finish = chunk_row is None or bool(
            BillingRunChunk.objects.filter(pk=chunk_row.pk, done_at__isnull=True).update(done_at=timezone.now())
        )
        if first_to_finish:
            BillingRun.objects.filter(pk=run.pk).update(
                offices_done=F("offices_done") + done,
                error_count=F("error_count") + errors,
                chunks_done=F("chunks_done") + 1,
            )
    return chunk


def _process_all(
    *,
    run: BillingRun,
    office_ids: Sequence[int],
    chunk: AdvanceStats,
    progress: Callable[[int, AdvanceStats], None] | None,
) -> tuple[int, int]:
    done = errors = 0
    for office_id in office_ids:
        try:
            stats = process_office(office_id=office_id, as_of=run.as_of, run_id=run.pk)
        except Exception as exc:
            logger.exception("billing run %s: office %s failed", run.pk, office_id)
            errors += 1
            message = f"{type(exc).__name__}: {exc}"[:2000]
            BillingRunError.objects.create(run=run, office_id=office_id, message=message)
            audit_record(
                action="billing_run.office_failed",
                target=run,
                office_id=office_id,
                outcome=Outcome.FAILURE,
                reason=type(exc).__name__,
            )
            stats = AdvanceStats()
        else:
            done += 1
        chunk.add(stats)
        if progress is not None:
            progress(office_id, stats)
    return done, errors


def billing_run_finish_if_done(run_id: int) -> BillingRun | None:
    """Close the run once all its chunks are in (exactly once: a conditional update)."""
    now = timezone.now()
    undone = BillingRunChunk.objects.filter(run=OuterRef("pk"), done_at__isnull=True)
    closed = BillingRun.objects.filter(
        Q(pk=run_id), Q(status=BillingRunStatus.RUNNING), Q(chunks_done__gte=F("chunks_total")), ~Exists(undone)
    ).update(status=BillingRunStatus.FINISHED, finished_at=now)
    if not closed:
        return None
    run = BillingRun.objects.get(pk=run_id)
    audit_record(
        action="billing_run.finished",
        target=run,
        outcome=Outcome.SUCCESS if run.error_count == 0 else Outcome.FAILURE,
        data={
            "as_of": run.as_of.isoformat(),
            "offices_done": run.offices_done,
            "invoices_finalized": run.invoices_finalized,
            "invoices_opened": run.invoices_opened,
            "lines_created": run.lines_created,
            "amount_finalized_cents": run.amount_finalized_cents,
            "errors": run.error_count,
        },
    )
    return run


def billing_runs_fail_stalled(*, now: datetime | None = None) -> list[int]:
    """Mark runs still `running` after BILLING_RUN_STALL_AFTER_MINUTES failed (a chunk task
    was lost, or its worker died for good): audited and logged, once each. Their offices
    are due again, so the next hourly run bills them (spec §6)."""
    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.BILLING_RUN_STALL_AFTER_MINUTES)
    failed: list[int] = []
    for run in BillingRun.objects.filter(status=BillingRunStatus.RUNNING, started_at__lt=cutoff).order_by("pk"):
        if not BillingRun.objects.filter(pk=run.pk, status=BillingRunStatus.RUNNING).update(
            status=BillingRunStatus.FAILED, finished_at=now
        ):
            continue  # another worker got there first
        pending = list(run.chunks.filter(done_at__isnull=True).values_list("seq", flat=True))
        logger.error("billing run %s stalled: chunks %s never finished; marked failed", run.pk, pending)
        audit_record(
            action="billing_run.stalled",
            target=run,
            outcome=Outcome.FAILURE,
            reason="chunks_not_done",
            data={"as_of": run.as_of.isoformat(), "chunks_pending": pending, "started_at": run.started_at.isoformat()},
        )
        failed.append(run.pk)
    return failed


def billing_run(
    *,
    as_of: datetime | str | None = None,
    office_ids: Sequence[int] | None = None,
    trigger: str = "command",
    progress: Callable[[int, AdvanceStats], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    allow_future: bool = False,
) -> BillingRun:
    """Run billing in this process for every due office (or the given ones). A future
    as-of is refused unless `allow_future`, which only the dry run passes (it rolls back)."""
    as_of_dt = validate_as_of(as_of, allow_future=allow_future)
    if office_ids is not None:
        missing = set(office_ids) - set(Office.objects.filter(pk__in=office_ids).values_list("pk", flat=True))
        if missing:
            raise ApplicationError(f"No office with id {', '.join(map(str, sorted(missing)))}.")
    due = offices_due(as_of=as_of_dt, office_ids=office_ids)
    run = billing_run_start(
        as_of=as_of_dt, trigger=trigger, office_ids=office_ids, offices_due_count=len(due), chunks=[due]
    )
    if on_start is not None:
        on_start(len(due))
    billing_run_process(run=run, office_ids=due, progress=progress, chunk_seq=0)
    billing_run_finish_if_done(run.pk)
    run.refresh_from_db()
    return run


# --- What a run did, and the dry run ---------------------------------------------------


@dataclass(frozen=True)
class InvoiceSummary:
    """One invoice a run finalized or opened, as a person reads it in a summary."""

    invoice_id: int
    office_id: int
    office: str
    timezone: str
    number: str | None
    kind: str
    kind_label: str
    status: str
    period_start: datetime | None
    period_end: datetime | None
    lines: int
    total_cents: int
    currency: str


@dataclass(frozen=True)
class RunReport:
    """A run's figures with the invoices it finalized and opened (found by the ids its
    steps recorded, never by time) and each office's step counts."""

    run: BillingRun
    dry_run: bool
    per_office: dict[int, AdvanceStats]
    office_names: dict[int, str]
    finalized: list[InvoiceSummary]
    opened: list[InvoiceSummary]
    errors: list[tuple[str, str]]

    def totals_by_currency(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for row in self.finalized:
            totals[row.currency] = totals.get(row.currency, 0) + row.total_cents
        return dict(sorted(totals.items()))


def _summaries(invoice_ids: Sequence[int]) -> list[InvoiceSummary]:
    invoices = (
        Invoice.objects.filter(pk__in=list(invoice_ids))
        .select_related("office")
        .annotate(line_count=Count("lines"))
        .order_by("office_id", "period_start", "id")
    )
    return [
        InvoiceSummary(
            invoice_id=inv.pk,
            office_id=inv.office_id,
            office=inv.office.name,
            timezone=inv.office.timezone,
            number=inv.number,
            kind=inv.kind,
            kind_label=inv.get_kind_display(),
            status=inv.status,
            period_start=inv.period_start,
            period_end=inv.period_end,
            lines=inv.line_count,
            total_cents=inv.total_cents,
            currency=inv.currency,
        )
        for inv in invoices
    ]


def billing_run_report(*, run: BillingRun, per_office: dict[int, AdvanceStats], dry_run: bool = False) -> RunReport:
    """Read back what `run` did (inside the run's transaction for a dry run)."""
    finalized_ids = [pk for stats in per_office.values() for pk in stats.finalized_ids]
    opened_ids = [pk for stats in per_office.values() for pk in stats.opened_ids]
    names = dict(Office.objects.filter(pk__in=list(per_office)).values_list("pk", "name"))
    errors = [(names.get(e.office_id, str(e.office_id)), e.message) for e in run.errors.order_by("pk")]
    return RunReport(
        run=run,
        dry_run=dry_run,
        per_office=per_office,
        office_names=names,
        finalized=_summaries(finalized_ids),
        opened=_summaries(opened_ids),
        errors=errors,
    )


class _DryRunRollback(Exception):
    """Raised to roll a dry run back once its report is read."""


def billing_run_preview(
    *,
    as_of: datetime | str | None = None,
    office_ids: Sequence[int] | None = None,
    trigger: str = "dry_run",
    progress: Callable[[int, AdvanceStats], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunReport:
    """The dry run (spec §10 `--dry-run`; the admin's preview): the real run through the
    real engine inside ONE transaction that is then rolled back — numbers, audit entries
    and Stripe push requests included (on_commit work is dropped). The only place a run
    uses one transaction for many offices.

    It may look ahead (`as_of` up to PREVIEW_HORIZON in the future): what is unknown yet is
    taken as it stands now — the patients active now stay active, nobody else is activated,
    pending plan changes and cancellations at period end apply at their boundary — so it
    shows what a run at that instant will finalize if nothing changes in between (numbers,
    finalization and due dates aside: those are the real run's, taken from its clock)."""
    per_office: dict[int, AdvanceStats] = {}

    def record(office_id: int, stats: AdvanceStats) -> None:
        per_office[office_id] = stats
        if progress is not None:
            progress(office_id, stats)

    report: RunReport | None = None
    try:
        with transaction.atomic():
            run = billing_run(
                as_of=as_of,
                office_ids=office_ids,
                trigger=trigger,
                progress=record,
                on_start=on_start,
                allow_future=True,
            )
            report = billing_run_report(run=run, per_office=per_office, dry_run=True)
            raise _DryRunRollback
    except _DryRunRollback:
        pass
    assert report is not None
    return report
