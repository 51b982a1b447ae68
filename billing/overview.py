"""The operators' overview (issue 9, item 1): one month's money, the last twelve months,
and what needs an operator now. Read only; the console page renders it.

Months are calendar months in the vendor's reporting zone, `BILLING_DEFAULT_TIMEZONE`.
Offices bill in their own zones (spec §2), but a vendor-wide report needs one calendar;
the database keeps UTC, so month M is the half-open UTC range [00:00 on the 1st of M,
00:00 on the 1st of M+1) computed in that zone (the first instant of the day where DST
skips midnight, as for cycles). An office's invoice therefore lands in the vendor's month
of its instant, not of the office's local date: a Berlin invoice finalized at 00:30 on
1 June (Berlin) is a May invoice in New York. Money is integer cents, one row per
currency; no amount is ever converted or added across currencies.

"As of" is the end of the month reported, or now if that month is the current one.

Per currency, for the month:
- billed: total of the invoices finalized in the month that are not void now (open, paid
  or uncollectible; drafts are not finalized).
- collected: total of the invoices paid in the month (their `paid_at`).
- outstanding: total of the invoices open as of the end of the month (or now): finalized
  before it and not yet paid, voided or written off (uncollectible) then. Uncollectible
  invoices are not outstanding.
- past due: the part of outstanding whose invoices had become past due by then.
- MRR: total of the cycle invoices (not void) whose billing period starts in the month;
  a cycle not finalized yet (a draft) counts with its running total (patient lines only:
  the plan minimum is added at finalization).
- MRR still in draft: the part of MRR that comes from such drafts.
Patients (any office, subscribed or not):
- active patients: patients active at the end of the month (or now).
- billable patients: distinct patients billed on the cycle invoices finalized in the
  month (not void) — one line per patient per cycle (spec §5).
- history: billed and collected for each of the 12 months ending with the month, every
  month present (zeros) for every currency listed; active patients at the end of each.
Now, whatever the month:
- aging: open invoices by how long past their due date they are now: "current" (not due
  yet), "1–30" (up to 30 days past it), "31–60", "61–90", "90+" days; a
  `charge_automatically` invoice is due when finalized.
- failed payments: failed payment attempts reported by Stripe in the last 30 days
  (audit `payment.failed`, one per attempt), newest first.
- stuck pushes: invoices whose Stripe push failed (an operator must look), or is still
  pending more than an hour after finalization (a void: after voiding).
- suspended offices: offices suspended for non-payment, oldest debt first, with what
  they owe past due.
- about to be suspended: offices past due whose grace period (`BILLING_GRACE_DAYS`)
  ends within the next 3 days (or has ended, waiting for the hourly dunning pass).
- latest runs: the last 5 billing runs, with the number of offices that failed in each.
- open mismatches: what the latest finished reconciliation with Stripe reported
  (audit `reconciliation.mismatch` entries between the previous `reconciliation.finished`
  entry and the latest one).
Lists are capped at `LIST_LIMIT` rows; `*_total` says how many there are.

The number of queries is fixed: aggregates with filters and grouping, never a query per
office or invoice."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Case, Count, IntegerField, Q, Sum, Value, When, Window
from django.utils import timezone

from audit.models import AuditEvent
from billing.dunning import grace_period
from billing.engine.cycles import add_months_clamped, local_date, local_midnight, zone
from billing.models import (
    PATIENT_LINE_KINDS,
    BillingRun,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    LineItem,
    PushState,
)
from config.errors import ApplicationError
from offices.models import Office, SubscriptionStatus
from patients.models import ActivationInterval

HISTORY_MONTHS = 12
LIST_LIMIT = 20
RECENT_FAILURES = timedelta(days=30)
# A push normally takes seconds; as billing/stripe/reconcile.PUSH_OVERDUE.
PUSH_STUCK_AFTER = timedelta(hours=1)
SUSPENSION_WARNING = timedelta(days=3)
LATEST_RUNS = 5
AGING_LABELS = ("current", "1–30", "31–60", "61–90", "90+")
_INVOICE_LABEL = Invoice._meta.label


@dataclass(frozen=True)
class Amount:
    currency: str
    cents: int


@dataclass(frozen=True)
class CurrencyFigures:
    """One currency's figures for the month (definitions in the module docstring)."""

    currency: str
    billed_cents: int
    collected_cents: int
    outstanding_cents: int
    past_due_cents: int
    mrr_cents: int
    mrr_draft_cents: int


@dataclass(frozen=True)
class MonthPoint:
    month: date
    currency: str
    billed_cents: int
    collected_cents: int


@dataclass(frozen=True)
class AgingBucket:
    label: str
    currency: str
    cents: int
    office_count: int
    offices: list[tuple[int, str, int]]  # (office_id, name, cents), largest first, capped


@dataclass(frozen=True)
class FailedPayment:
    at: datetime
    office_id: int | None
    office_name: str
    invoice_id: int | None
    number: str
    currency: str
    cents: int
    attempt_count: int | None


@dataclass(frozen=True)
class StuckPush:
    invoice_id: int
    number: str
    office_id: int
    office_name: str
    status: str
    push_state: str
    push_attempts: int
    push_error: str
    waiting_since: datetime  # finalized_at; voided_at for a void not yet carried to Stripe
    currency: str
    cents: int


@dataclass(frozen=True)
class OfficeInDunning:
    office_id: int
    name: str
    status: str
    past_due_since: datetime
    suspends_at: datetime  # past_due_since + grace: suspended at the first dunning pass after it
    past_due: list[Amount]


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    as_of: datetime
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    offices_due: int
    offices_done: int
    invoices_finalized: int
    invoices_opened: int
    lines_created: int
    failed_offices: int  # distinct offices with a BillingRunError row for the run


@dataclass(frozen=True)
class OpenMismatch:
    at: datetime
    field: str
    local: str
    stripe: str
    office_id: int | None
    office_name: str
    invoice_id: int | None
    number: str
    stripe_id: str  # the Stripe invoice, or customer for per-office fields


@dataclass(frozen=True)
class Overview:
    month: date  # first day of the month reported
    zone: str  # the reporting zone
    starts_at: datetime  # the month as a UTC range [starts_at, ends_at)
    ends_at: datetime
    as_of: datetime  # min(ends_at, now): what outstanding, past due and active patients are as of
    now: datetime
    figures: list[CurrencyFigures]
    active_patients: int
    billable_patients_in_month: int
    history: list[MonthPoint]  # by currency, then month
    patients_history: list[tuple[date, int]]
    aging: list[AgingBucket]  # by currency, then bucket
    failed_payments: list[FailedPayment]
    failed_payments_total: int
    stuck_pushes: list[StuckPush]
    stuck_pushes_total: int
    suspended_offices: list[OfficeInDunning]
    suspended_total: int
    about_to_suspend: list[OfficeInDunning]
    about_to_suspend_total: int
    latest_runs: list[RunSummary]
    open_mismatches: list[OpenMismatch]
    open_mismatches_total: int
    reconciled_at: datetime | None  # when the latest finished reconciliation ended


def overview(*, month: date | None = None, now: datetime | None = None) -> Overview:
    """Everything the overview page shows (definitions in the module docstring)."""
    now = now or timezone.now()
    tz_name = str(settings.BILLING_DEFAULT_TIMEZONE)
    tz = zone(tz_name)
    current = local_date(now, tz).replace(day=1)
    month = (month or current).replace(day=1)
    if month > current:
        raise ApplicationError(f"The month {month:%Y-%m} has not started yet.", {"field": "month"})
    months = [add_months_clamped(month, k) for k in range(1 - HISTORY_MONTHS, 1)]
    bounds = [(local_midnight(m, tz), local_midnight(add_months_clamped(m, 1), tz)) for m in months]
    starts_at, ends_at = bounds[-1]
    as_of = min(now, ends_at)

    figures, history = _money(months=months, bounds=bounds, as_of=as_of, now=now)
    patients_history = _patients_history(months=months, bounds=bounds, as_of=as_of)
    suspended, suspended_total, about, about_total = _dunning(now=now)
    failed, failed_total = _failed_payments(now=now)
    stuck, stuck_total = _stuck_pushes(now=now)
    mismatches, mismatches_total, reconciled_at = _open_mismatches()
    return Overview(
        month=month,
        zone=tz_name,
        starts_at=starts_at,
        ends_at=ends_at,
        as_of=as_of,
        now=now,
        figures=figures,
        active_patients=patients_history[-1][1],
        billable_patients_in_month=_billable_patients(starts_at=starts_at, ends_at=ends_at),
        history=history,
        patients_history=patients_history,
        aging=_aging(now=now),
        failed_payments=failed,
        failed_payments_total=failed_total,
        stuck_pushes=stuck,
        stuck_pushes_total=stuck_total,
        suspended_offices=suspended,
        suspended_total=suspended_total,
        about_to_suspend=about,
        about_to_suspend_total=about_total,
        latest_runs=_latest_runs(),
        open_mismatches=mismatches,
        open_mismatches_total=mismatches_total,
        reconciled_at=reconciled_at,
    )


def _cents(value: Any) -> int:
    return int(value or 0)


def _open_as_of(as_of: datetime, now: datetime) -> Q:
    """Invoices that were open at the instant `as_of`. Now, that is the status; for a
    past instant it is read from the timestamps of what happened to each invoice since."""
    if as_of >= now:
        return Q(status=InvoiceStatus.OPEN)
    settled_later = (
        Q(status=InvoiceStatus.OPEN)
        | Q(status=InvoiceStatus.PAID, paid_at__gte=as_of)
        | Q(status=InvoiceStatus.VOID, voided_at__gte=as_of)
        | Q(status=InvoiceStatus.UNCOLLECTIBLE, marked_uncollectible_at__gte=as_of)
    )
    # Uncollectible, then paid or voided later: it was not open in between.
    return Q(finalized_at__lt=as_of) & settled_later & ~Q(marked_uncollectible_at__lt=as_of)


def _money(
    *, months: list[date], bounds: list[tuple[datetime, datetime]], as_of: datetime, now: datetime
) -> tuple[list[CurrencyFigures], list[MonthPoint]]:
    """One query: every currency's month figures and history, by conditional sums."""
    billed = ~Q(status__in=(InvoiceStatus.DRAFT, InvoiceStatus.VOID))
    starts_at, ends_at = bounds[-1]
    open_then = _open_as_of(as_of, now)
    cycles_of_month = Q(kind=InvoiceKind.CYCLE, period_start__gte=starts_at, period_start__lt=ends_at) & ~Q(
        status=InvoiceStatus.VOID
    )
    aggregates: dict[str, Any] = {
        "outstanding": Sum("total_cents", filter=open_then),
        "past_due": Sum("total_cents", filter=open_then & Q(past_due_at__lt=as_of)),
        "mrr": Sum("total_cents", filter=cycles_of_month),
        "mrr_draft": Sum("total_cents", filter=cycles_of_month & Q(status=InvoiceStatus.DRAFT)),
    }
    for i, (start, end) in enumerate(bounds):
        aggregates[f"billed_{i}"] = Sum("total_cents", filter=billed & Q(finalized_at__gte=start, finalized_at__lt=end))
        aggregates[f"collected_{i}"] = Sum(
            "total_cents", filter=Q(status=InvoiceStatus.PAID, paid_at__gte=start, paid_at__lt=end)
        )
    # Typed loosely: the aggregate keys are built at run time.
    rows: list[dict[str, Any]] = [dict(r) for r in Invoice.objects.order_by().values("currency").annotate(**aggregates)]

    last = len(bounds) - 1
    figures: list[CurrencyFigures] = []
    history: list[MonthPoint] = []
    for row in sorted(rows, key=lambda r: r["currency"]):
        points = [
            MonthPoint(
                month=m,
                currency=row["currency"],
                billed_cents=_cents(row[f"billed_{i}"]),
                collected_cents=_cents(row[f"collected_{i}"]),
            )
            for i, m in enumerate(months)
        ]
        line = CurrencyFigures(
            currency=row["currency"],
            billed_cents=points[last].billed_cents,
            collected_cents=points[last].collected_cents,
            outstanding_cents=_cents(row["outstanding"]),
            past_due_cents=_cents(row["past_due"]),
            mrr_cents=_cents(row["mrr"]),
            mrr_draft_cents=_cents(row["mrr_draft"]),
        )
        month_figures = (line.outstanding_cents, line.past_due_cents, line.mrr_cents)
        if any(month_figures) or any(p.billed_cents or p.collected_cents for p in points):
            figures.append(line)
            history.extend(points)
    return figures, history


def _active_at(instant: datetime) -> Q:
    return Q(activated_at__lt=instant) & (Q(deactivated_at__isnull=True) | Q(deactivated_at__gte=instant))


def _patients_history(
    *, months: list[date], bounds: list[tuple[datetime, datetime]], as_of: datetime
) -> list[tuple[date, int]]:
    """One query: patients active at the end of each month (the last one: as of)."""
    ends = [end for _start, end in bounds[:-1]] + [as_of]
    counts = ActivationInterval.objects.aggregate(
        **{f"p{i}": Count("patient_id", distinct=True, filter=_active_at(end)) for i, end in enumerate(ends)}
    )
    return [(m, int(counts[f"p{i}"] or 0)) for i, m in enumerate(months)]


def _billable_patients(*, starts_at: datetime, ends_at: datetime) -> int:
    count = (
        LineItem.objects.filter(
            kind__in=PATIENT_LINE_KINDS,
            invoice__kind=InvoiceKind.CYCLE,
            invoice__finalized_at__gte=starts_at,
            invoice__finalized_at__lt=ends_at,
        )
        .exclude(invoice__status=InvoiceStatus.VOID)
        .aggregate(n=Count("patient_id", distinct=True))["n"]
    )
    return int(count or 0)


def aging(*, now: datetime | None = None, limit: int | None = None) -> list[AgingBucket]:
    """Receivables by age as of now, every office behind each bucket unless `limit` (the
    console's CSV export)."""
    return _aging(now=now or timezone.now(), limit=limit)


def _aging(*, now: datetime, limit: int | None = LIST_LIMIT) -> list[AgingBucket]:
    """One query: open invoices' totals by currency, bucket and office."""
    bucket = Case(
        When(due_at__isnull=True, then=Value(0)),
        When(due_at__gte=now, then=Value(0)),
        When(due_at__gte=now - timedelta(days=30), then=Value(1)),
        When(due_at__gte=now - timedelta(days=60), then=Value(2)),
        When(due_at__gte=now - timedelta(days=90), then=Value(3)),
        default=Value(4),
        output_field=IntegerField(),
    )
    rows = (
        Invoice.objects.filter(status=InvoiceStatus.OPEN)
        .annotate(bucket=bucket)
        .values("currency", "bucket", "office_id", "office__name")
        .annotate(cents=Sum("total_cents"))
        .order_by()
    )
    grouped: dict[tuple[str, int], list[tuple[int, str, int]]] = defaultdict(list)
    currencies: set[str] = set()
    for row in rows:
        currencies.add(row["currency"])
        grouped[(row["currency"], row["bucket"])].append((row["office_id"], row["office__name"], _cents(row["cents"])))
    aging: list[AgingBucket] = []
    for currency in sorted(currencies):
        for index, label in enumerate(AGING_LABELS):
            offices = sorted(grouped.get((currency, index), []), key=lambda o: (-o[2], o[1], o[0]))
            aging.append(
                AgingBucket(
                    label=label,
                    currency=currency,
                    cents=sum(o[2] for o in offices),
                    office_count=len(offices),
                    offices=offices[:limit] if limit is not None else offices,
                )
            )
    return aging


def _invoice_id(event: AuditEvent) -> int | None:
    """The invoice an audit entry is about, if it is about one."""
    return int(event.target_id) if event.target_type == _INVOICE_LABEL and event.target_id.isdigit() else None


def _failed_payments(*, now: datetime) -> tuple[list[FailedPayment], int]:
    """Two queries: the latest failure entries (with their total), then their invoices."""
    events = list(
        AuditEvent.objects.filter(action="payment.failed", ts__gte=now - RECENT_FAILURES, ts__lte=now)
        .annotate(total=Window(expression=Count("pk")))
        .order_by("-ts", "-id")[:LIST_LIMIT]
    )
    invoice_ids = {_invoice_id(e) for e in events} - {None}
    invoices = Invoice.objects.select_related("office").in_bulk(invoice_ids) if invoice_ids else {}
    failed: list[FailedPayment] = []
    for event in events:
        invoice_id = _invoice_id(event)
        invoice = invoices.get(invoice_id) if invoice_id is not None else None
        attempts = event.data.get("attempt_count")
        failed.append(
            FailedPayment(
                at=event.ts,
                office_id=event.office_id,
                office_name=invoice.office.name if invoice else "",
                invoice_id=invoice.pk if invoice else None,
                number=str(event.data.get("number") or (invoice.number if invoice else "") or ""),
                currency=invoice.currency if invoice else "",
                cents=invoice.total_cents if invoice else _cents(event.data.get("total_cents")),
                attempt_count=int(attempts) if isinstance(attempts, int) else None,
            )
        )
    return failed, (events[0].total if events else 0)


def _stuck_pushes(*, now: datetime) -> tuple[list[StuckPush], int]:
    cutoff = now - PUSH_STUCK_AFTER
    pending_too_long = Q(push_state=PushState.PENDING) & (
        Q(status=InvoiceStatus.VOID, voided_at__lt=cutoff)
        | (~Q(status__in=(InvoiceStatus.VOID, InvoiceStatus.DRAFT)) & Q(finalized_at__lt=cutoff))
    )
    failed = Q(push_state=PushState.FAILED) & ~Q(status=InvoiceStatus.DRAFT)
    rows = list(
        Invoice.objects.filter(failed | pending_too_long)
        .select_related("office")
        .annotate(total=Window(expression=Count("pk")))
        .order_by("finalized_at", "id")[:LIST_LIMIT]
    )
    stuck = [
        StuckPush(
            invoice_id=inv.pk,
            number=inv.number or "",
            office_id=inv.office_id,
            office_name=inv.office.name,
            status=inv.status,
            push_state=inv.push_state,
            push_attempts=inv.push_attempts,
            push_error=inv.push_error,
            waiting_since=(inv.voided_at if inv.status == InvoiceStatus.VOID else inv.finalized_at) or inv.created_at,
            currency=inv.currency,
            cents=inv.total_cents,
        )
        for inv in rows
    ]
    return stuck, (rows[0].total if rows else 0)


def _dunning(*, now: datetime) -> tuple[list[OfficeInDunning], int, list[OfficeInDunning], int]:
    """Three queries: suspended offices, offices about to be, and what both owe past due."""
    grace = grace_period()
    suspended = list(
        Office.objects.filter(subscription_status=SubscriptionStatus.SUSPENDED)
        .annotate(total=Window(expression=Count("pk")))
        .order_by("past_due_since", "pk")[:LIST_LIMIT]
    )
    about = list(
        Office.objects.filter(
            subscription_status=SubscriptionStatus.PAST_DUE,
            past_due_since__isnull=False,
            past_due_since__lte=now + SUSPENSION_WARNING - grace,
        )
        .annotate(total=Window(expression=Count("pk")))
        .order_by("past_due_since", "pk")[:LIST_LIMIT]
    )
    office_ids = [o.pk for o in suspended + about]
    owed: dict[int, list[Amount]] = defaultdict(list)
    if office_ids:
        debts = (
            Invoice.objects.filter(office_id__in=office_ids, status=InvoiceStatus.OPEN, past_due_at__isnull=False)
            .values("office_id", "currency")
            .annotate(cents=Sum("total_cents"))
            .order_by("office_id", "currency")
        )
        for row in debts:
            owed[row["office_id"]].append(Amount(currency=row["currency"], cents=_cents(row["cents"])))

    def entry(office: Office) -> OfficeInDunning:
        since = office.past_due_since or now  # suspended with no debt left: the next pass reactivates it
        return OfficeInDunning(
            office_id=office.pk,
            name=office.name,
            status=office.subscription_status,
            past_due_since=since,
            suspends_at=since + grace,
            past_due=owed.get(office.pk, []),
        )

    suspended_total = int(suspended[0].total) if suspended else 0
    about_total = int(about[0].total) if about else 0
    return [entry(o) for o in suspended], suspended_total, [entry(o) for o in about], about_total


def _latest_runs() -> list[RunSummary]:
    runs = BillingRun.objects.annotate(failed=Count("errors__office_id", distinct=True)).order_by("-started_at", "-id")[
        :LATEST_RUNS
    ]
    return [
        RunSummary(
            run_id=run.pk,
            as_of=run.as_of,
            trigger=run.trigger,
            status=run.status,
            started_at=run.started_at,
            finished_at=run.finished_at,
            offices_due=run.offices_due,
            offices_done=run.offices_done,
            invoices_finalized=run.invoices_finalized,
            invoices_opened=run.invoices_opened,
            lines_created=run.lines_created,
            failed_offices=run.failed,
        )
        for run in runs
    ]


def _open_mismatches() -> tuple[list[OpenMismatch], int, datetime | None]:
    """Three queries: the last two finished reconciliations, the mismatches audited
    between them, and the names of their offices."""
    finished = list(AuditEvent.objects.filter(action="reconciliation.finished").order_by("-id").values("id", "ts")[:2])
    if not finished:
        return [], 0, None
    after = finished[1]["id"] if len(finished) > 1 else 0
    events = list(
        AuditEvent.objects.filter(action="reconciliation.mismatch", id__gt=after, id__lt=finished[0]["id"])
        .annotate(total=Window(expression=Count("pk")))
        .order_by("id")[:LIST_LIMIT]
    )
    office_ids = {e.office_id for e in events if e.office_id is not None}
    names = dict(Office.objects.filter(pk__in=office_ids).values_list("pk", "name")) if office_ids else {}
    mismatches = [
        OpenMismatch(
            at=e.ts,
            field=str(e.data.get("field") or e.reason),
            local=str(e.data.get("local", "")),
            stripe=str(e.data.get("stripe", "")),
            office_id=e.office_id,
            office_name=names.get(e.office_id, "") if e.office_id is not None else "",
            invoice_id=_invoice_id(e),
            number=str(e.data.get("number", "")),
            stripe_id=str(e.data.get("stripe_invoice_id", "")),
        )
        for e in events
    ]
    return mismatches, (events[0].total if events else 0), finished[0]["ts"]
