"""The billing run survives crashes (spec §6; issue 8, "also prove"): real processes,
killed with SIGKILL, against the test database on PostgreSQL.

1. `manage.py run_billing_cycle` killed at seeded random points of its run (and once inside
   a step's transaction, with the office lock and the invoice-number row held), then run
   again to completion.
2. A Celery worker killed mid-chunk on the hourly path: on a private Redis broker (acks
   late: the unacknowledged chunk is handed out again after the visibility timeout), on the
   filesystem broker (the message is gone: the stalled-run rule and the next tick bill the
   rest), and a pool process killed under a live prefork worker (reject_on_worker_lost).
3. Every invoice finalized after a crash and a rerun pushed to localstripe once.

What must hold after recovery, whatever the kill hit: exactly the invoices a clean run
makes (one cycle invoice per office and period, every ended cycle finalized and the next
opened, the same lines and totals), numbers gapless and unique across all offices, and
the audit chain intact and fully sealed. Each test prints what its kill hit (`-s`)."""

from __future__ import annotations

import io
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from audit.models import AuditEvent
from audit.verify import verify_chain
from billing.engine.run import billing_run_preview, billing_runs_fail_stalled
from billing.models import (
    BillingRun,
    BillingRunChunk,
    BillingRunStatus,
    Invoice,
    InvoiceKind,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    PushState,
)
from billing.services import patient_activate, patient_deactivate, subscription_create
from billing.stripe.gateway import Gateway, client
from billing.stripe.push import invoice_push
from billing.tests.support import crash
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import localstripe_env
from offices.models import Office

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

TIMEZONES = ("America/Chicago", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "UTC")
COMMAND_OFFICES = 30
PUSH_OFFICES = 10
WORKER_OFFICES = 18
CHUNK_SIZE = 3
STEP_DELAY = "0.15"  # seconds a slowed-down worker step holds its transaction open (fault injection)
COMMAND_STEP_DELAY = "0.04"  # the same for the command killed inside a step


@pytest.fixture
def children() -> Iterator[list[crash.Child]]:
    """Every subprocess a test starts; none outlives it (the database flush would wait)."""
    started: list[crash.Child] = []
    yield started
    for child in started:
        child.stop()


@pytest.fixture
def db_name(on_postgres: None, children: list[crash.Child]) -> str:
    return str(connection.settings_dict["NAME"])


# --- Building offices whose cycles have ended ---------------------------------------------


def build_offices(count: int, *, as_of: datetime) -> list[Office]:
    """`count` offices, each subscribed 1 to 3 cycles before `as_of` (so the run has 1–3
    boundaries to catch up per office), with patients active before the subscription, one
    activated and one deactivated during the first cycle on some, a per-patient price, a
    minimum most offices fall under, and a setup fee (numbered at subscription)."""
    PlanFactory(code="crash", per_patient_cents=450, minimum_cents=1500, setup_fee_cents=5000)
    offices: list[Office] = []
    for i in range(count):
        office = OfficeFactory(timezone=TIMEZONES[i % len(TIMEZONES)])
        subscribed = as_of - timedelta(days=32 * (1 + i % 3), hours=i)
        patients = [PatientFactory(office=office) for _ in range(3 + i % 2)]
        with at(subscribed - timedelta(days=1)):
            for patient in patients:
                patient_activate(patient=patient)
        with at(subscribed):
            subscription_create(office=office, plan_code="crash")
        if i % 2 == 0:
            with at(subscribed + timedelta(days=3)):
                patient_activate(patient=PatientFactory(office=office))
        if i % 4 == 1:
            with at(subscribed + timedelta(days=5)):
                patient_deactivate(patient=patients[0])
        offices.append(office)
    return offices


@dataclass(frozen=True)
class Baseline:
    """What one clean run would do, read from the dry run (the real engine, rolled back)."""

    finalized: Counter[tuple[Any, ...]]
    opened: Counter[tuple[Any, ...]]

    @property
    def finalized_count(self) -> int:
        return sum(self.finalized.values())


def clean_run_baseline(as_of: datetime) -> Baseline:
    report = billing_run_preview(as_of=as_of)
    assert not report.errors, report.errors
    finalized = Counter(
        (row.office_id, row.period_start, row.period_end, row.total_cents, row.lines) for row in report.finalized
    )
    opened = Counter(  # the drafts left open (a catch-up opens and finalizes the ones between)
        (row.office_id, row.period_start, row.period_end) for row in report.opened if row.status == InvoiceStatus.DRAFT
    )
    assert Invoice.objects.filter(kind=InvoiceKind.CYCLE).exclude(status=InvoiceStatus.DRAFT).count() == 0
    return Baseline(finalized=finalized, opened=opened)


# --- Reading the database -----------------------------------------------------------------


def finalized_cycles() -> int:
    return Invoice.objects.filter(kind=InvoiceKind.CYCLE).exclude(status=InvoiceStatus.DRAFT).count()


def backends() -> list[tuple[Any, ...]]:
    """The other connections to the test database: (pid, state, in a transaction, query)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, xact_start IS NOT NULL, left(query, 70) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return list(cursor.fetchall())


def in_transaction(rows: list[tuple[Any, ...]]) -> bool:
    return any(row[2] for row in rows)


def wait_for_backends_gone(timeout: float = 10.0) -> None:
    """A killed client's backend ends (and rolls back) once it sees the closed socket."""
    crash.wait_until(lambda: not backends(), timeout=timeout, poll=0.05, what="the killed process's backends to end")


def assert_recovered(baseline: Baseline, *, offices: list[Office], as_of: datetime | None) -> dict[str, Any]:
    """Everything that must hold once billing has recovered; returns a few figures."""
    cycles = Invoice.objects.filter(kind=InvoiceKind.CYCLE)
    finalized = cycles.exclude(status=InvoiceStatus.DRAFT)
    # Exactly the invoices of a clean run: same offices, periods, totals and line counts,
    # none twice, none missing.
    got = Counter(
        (inv.office_id, inv.period_start, inv.period_end, inv.total_cents, inv.lines.count()) for inv in finalized
    )
    assert got == baseline.finalized, {"missing": baseline.finalized - got, "extra": got - baseline.finalized}
    per_period = Counter(cycles.values_list("office_id", "period_start"))
    assert max(per_period.values()) == 1, [k for k, n in per_period.items() if n > 1]
    # Every ended cycle finalized and the next one opened: one draft per office, the one
    # the clean run opens, still running at as_of.
    drafts = Counter(cycles.filter(status=InvoiceStatus.DRAFT).values_list("office_id", "period_start", "period_end"))
    assert drafts == baseline.opened, {"missing": baseline.opened - drafts, "extra": drafts - baseline.opened}
    assert set(cycles.filter(status=InvoiceStatus.DRAFT).values_list("office_id", flat=True)) == {o.pk for o in offices}
    if as_of is not None:
        assert not cycles.filter(status=InvoiceStatus.DRAFT, period_end__lte=as_of).exists()
    # Frozen totals add up to the lines.
    for inv in Invoice.objects.exclude(status=InvoiceStatus.DRAFT):
        lines = LineItem.objects.filter(invoice=inv).aggregate(s=Sum("amount_cents"))["s"] or 0
        assert inv.total_cents == lines, (inv.number, inv.total_cents, lines)
    # Numbers: unique and gapless across all offices (setup fees and cycles), per year, and
    # each year's counter stands at its last number (a killed step gave its number back).
    numbers = list(Invoice.objects.exclude(status=InvoiceStatus.DRAFT).values_list("number", flat=True))
    assert len(numbers) == len(set(numbers))
    gaps = crash.number_gaps(numbers, django_settings.INVOICE_NUMBER_PREFIX)
    assert not gaps, gaps
    per_year = Counter(n.rsplit("-", 2)[1] for n in numbers)
    counters = dict(InvoiceNumberSequence.objects.values_list("year", "last_value"))
    assert {str(y): v for y, v in counters.items()} == dict(per_year)
    # The audit chain: the killed process's committed entries were sealed by the rerun;
    # the chain verifies end to end, nothing left unsealed.
    report = verify_chain()
    assert report.ok, report.broken and report.broken.describe()
    assert report.unsealed == 0 and report.sealed == AuditEvent.objects.count()
    out = io.StringIO()
    call_command("verify_audit_chain", stdout=out)
    assert "OK: audit chain intact" in out.getvalue()
    finalized_audits = AuditEvent.objects.filter(action="invoice.finalized").count()
    assert finalized_audits == len(numbers), (finalized_audits, len(numbers))
    return {"finalized": len(numbers), "cycles_finalized": finalized.count(), "audit_sealed": report.sealed}


# --- 1. kill -9 of the run command --------------------------------------------------------


@dataclass(frozen=True)
class KillPlan:
    seed: int | None
    fault: bool  # slowed-down steps: the kill lands inside a step's transaction


KILL_PLANS = {
    "seed-11": KillPlan(seed=11, fault=False),
    "seed-23": KillPlan(seed=23, fault=False),
    "seed-37": KillPlan(seed=37, fault=False),
    "inside-a-step": KillPlan(seed=5, fault=True),
}


def kill_command_mid_run(
    plan: KillPlan, *, db_name: str, as_of: datetime, total: int, tmp_path: Path, children: list[crash.Child]
) -> dict[str, Any]:
    """Start the run command, SIGKILL it at the plan's point, report what the kill hit."""
    rng = random.Random(plan.seed)
    target = rng.randint(max(1, total // 6), max(1, total * 5 // 6))  # invoices finalized before the kill
    jitter = rng.uniform(0.0, 0.03)  # and then a little more
    extra = {"CRASH_STEP_DELAY": COMMAND_STEP_DELAY} if plan.fault else {}
    child = crash.manage(
        ["run_billing_cycle", "--as-of", as_of.isoformat(), "--no-progress"],
        crash.subprocess_env(db_name, **extra),
        tmp_path / "killed-run.log",
        fault=plan.fault,
    )
    children.append(child)
    crash.wait_until(lambda: finalized_cycles() >= target, timeout=60, poll=0.005, what="progress", child=child)
    time.sleep(jitter)
    seen = backends()
    if plan.fault:  # at the next instant a step's transaction is open
        seen = crash.wait_until(
            lambda: (rows := backends()) and in_transaction(rows) and rows, timeout=10, poll=0.002, what="an open step"
        )
    lived = child.kill9()
    assert child.proc.returncode == -9, (child.proc.returncode, child.log())
    wait_for_backends_gone()
    return {
        "target": target,
        "jitter_ms": round(jitter * 1000, 1),
        "alive_s": round(lived, 2),
        "backend_before_kill": [(state, in_xact, query) for _, state, in_xact, query in seen],
        "committed_at_kill": finalized_cycles(),
        "unsealed_after_kill": AuditEvent.objects.filter(seq__isnull=True).count(),
    }


def crash_and_rerun(
    plan: KillPlan, *, offices_count: int, db_name: str, tmp_path: Path, children: list[crash.Child]
) -> tuple[list[Office], Baseline, dict[str, Any]]:
    """Offices due, the command killed at the plan's point, then run again to completion;
    every recovery check passed. Returns the offices, the clean-run baseline, what happened."""
    started = time.monotonic()
    as_of = (timezone.now() - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    offices = build_offices(offices_count, as_of=as_of)
    t_built = time.monotonic()
    baseline = clean_run_baseline(as_of)
    total = baseline.finalized_count
    t_base = time.monotonic()

    hit = kill_command_mid_run(plan, db_name=db_name, as_of=as_of, total=total, tmp_path=tmp_path, children=children)
    killed = BillingRun.objects.get()
    # The kill landed mid-run: some cycles finalized and committed, others not.
    assert 0 < hit["committed_at_kill"] < total, hit
    if plan.fault:
        assert any(in_xact for _, in_xact, _ in hit["backend_before_kill"]), hit

    out = io.StringIO()
    t_kill = time.monotonic()
    call_command("run_billing_cycle", "--as-of", as_of.isoformat(), "--no-progress", stdout=out)
    t_rerun = time.monotonic()
    rerun = BillingRun.objects.exclude(pk=killed.pk).get()
    figures = assert_recovered(baseline, offices=offices, as_of=as_of)
    t_check = time.monotonic()

    # The killed run stays `running` with exactly the work it committed counted (each step
    # adds its figures in its own transaction), its chunk delivered once and never done:
    # the stalled-run rule closes it after BILLING_RUN_STALL_AFTER_MINUTES (the hourly tick).
    killed.refresh_from_db()
    assert killed.status == BillingRunStatus.RUNNING and killed.finished_at is None
    assert (killed.offices_due, killed.invoices_finalized, killed.offices_done, killed.chunks_done) == (
        len(offices),
        hit["committed_at_kill"],
        0,
        0,
    )
    assert list(killed.chunks.values_list("deliveries", "done_at")) == [(1, None)]
    # The rerun finished and counts exactly what was left after the kill.
    assert rerun.status == BillingRunStatus.FINISHED and rerun.error_count == 0
    assert rerun.invoices_finalized == total - hit["committed_at_kill"], (rerun.invoices_finalized, hit)
    assert rerun.offices_done == rerun.offices_due
    hit.update(
        killed_run=(killed.status, killed.offices_due, killed.invoices_finalized, killed.chunks_done),
        rerun=(rerun.status, rerun.offices_due, rerun.invoices_finalized),
        timings=(
            f"{time.monotonic() - started:.1f} s (setup {t_built - started:.1f}, dry run {t_base - t_built:.1f}, "
            f"kill {t_kill - t_base:.1f}, rerun {t_rerun - t_kill:.1f}, checks {t_check - t_rerun:.1f})"
        ),
    )
    print(f"\n[{plan}] {total} cycles due over {len(offices)} offices; {hit}; after: {figures}")
    return offices, baseline, hit


@pytest.mark.parametrize("plan", list(KILL_PLANS.values()), ids=list(KILL_PLANS))
def test_the_run_command_killed_at_any_point_is_completed_by_a_rerun(plan, db_name, children, tmp_path):
    crash_and_rerun(plan, offices_count=COMMAND_OFFICES, db_name=db_name, tmp_path=tmp_path, children=children)


# --- 2. kill -9 of a Celery worker mid-chunk ----------------------------------------------


def enqueue_tick(broker_url: str, transport_options: dict[str, Any]) -> None:
    """Send the hourly tick through the broker (to whichever worker consumes it)."""
    from config.celery_app import app

    with app.connection_for_write(broker_url, transport_options=transport_options) as conn:
        app.send_task("billing.tasks.billing_run_tick", connection=conn)


def the_run() -> BillingRun | None:
    return BillingRun.objects.order_by("pk").first()


def chunk_caught_mid_work(min_seq: int) -> BillingRunChunk | None:
    """A chunk (seq >= min_seq) being worked on, with at least one of its offices' steps
    already committed, while the worker holds a step's transaction open."""
    run = the_run()
    if run is None:
        return None
    for chunk in BillingRunChunk.objects.filter(run=run, seq__gte=min_seq, deliveries__gte=1, done_at__isnull=True):
        committed = (
            Invoice.objects.filter(kind=InvoiceKind.CYCLE, office_id__in=chunk.office_ids)
            .exclude(status=InvoiceStatus.DRAFT)
            .exists()
        )
        if committed and in_transaction(backends()):
            return chunk
    return None


def chunk_progress(chunk: BillingRunChunk) -> dict[str, Any]:
    done = set(
        Invoice.objects.filter(kind=InvoiceKind.CYCLE, office_id__in=chunk.office_ids)
        .exclude(status=InvoiceStatus.DRAFT)
        .values_list("office_id", flat=True)
    )
    steps = (
        Invoice.objects.filter(kind=InvoiceKind.CYCLE, office_id__in=chunk.office_ids)
        .exclude(status=InvoiceStatus.DRAFT)
        .count()
    )
    return {
        "seq": chunk.seq,
        "offices": chunk.office_ids,
        "offices_with_committed_steps": sorted(done),
        "committed_steps": steps,
    }


@dataclass
class WorkerCrash:
    offices: list[Office]
    baseline: Baseline
    run: BillingRun
    chunk: BillingRunChunk  # the one killed mid-work
    hit: dict[str, Any]


def start_worker_run_and_kill(
    *,
    db_name: str,
    broker_url: str,
    transport_options: dict[str, Any],
    worker_env: dict[str, str],
    tmp_path: Path,
    children: list[crash.Child],
    seed: int,
    pool: str = "solo",
    kill_pool_process_only: bool = False,
) -> tuple[WorkerCrash, crash.Child]:
    """Offices due; a (slowed-down) worker; the tick through the broker; SIGKILL mid-chunk."""
    as_of = timezone.now().replace(microsecond=0) - timedelta(minutes=1)
    offices = build_offices(WORKER_OFFICES, as_of=as_of)
    baseline = clean_run_baseline(timezone.now())
    rng = random.Random(seed)
    chunks_total = -(-WORKER_OFFICES // CHUNK_SIZE)
    min_seq = rng.randint(1, chunks_total - 2)
    env = crash.subprocess_env(
        db_name,
        CELERY_BROKER_URL=broker_url,
        BILLING_RUN_CHUNK_SIZE=str(CHUNK_SIZE),
        CRASH_STEP_DELAY=STEP_DELAY,
        **worker_env,
    )
    first = crash.worker(env, tmp_path / "worker-1.log", pool=pool)
    children.append(first)
    enqueue_tick(broker_url, transport_options)
    chunk = crash.wait_until(
        lambda: chunk_caught_mid_work(min_seq), timeout=60, poll=0.005, what="a chunk mid-work", child=first
    )
    seen = backends()
    if kill_pool_process_only:
        pool_pids = crash.pool_processes(first.pid)
        assert len(pool_pids) == 1, pool_pids
        crash.kill_pid(pool_pids[0])
        killed_what = f"pool process {pool_pids[0]} of worker {first.pid}"
    else:
        first.kill9()
        killed_what = f"worker {first.pid} and its process group"
        wait_for_backends_gone()
    run = the_run()
    assert run is not None
    chunk.refresh_from_db()
    hit = {
        "killed": killed_what,
        "chunks_total": run.chunks_total,
        "chunks_done_at_kill": BillingRunChunk.objects.filter(run=run, done_at__isnull=False).count(),
        "chunk_killed": chunk_progress(chunk),
        "chunk_deliveries_at_kill": chunk.deliveries,
        "cycles_committed_at_kill": finalized_cycles(),
        "cycles_due": baseline.finalized_count,
        "backend_before_kill": [(state, in_xact, query) for _, state, in_xact, query in seen],
    }
    return WorkerCrash(offices=offices, baseline=baseline, run=run, chunk=chunk, hit=hit), first


def wait_for_run_finished(run_id: int, child: crash.Child, timeout: float = 60) -> BillingRun:
    def finished() -> bool:
        return BillingRun.objects.filter(pk=run_id, status=BillingRunStatus.FINISHED).exists() and (
            AuditEvent.objects.filter(action="billing_run.finished", target_id=str(run_id), seq__isnull=False).exists()
        )

    crash.wait_until(finished, timeout=timeout, poll=0.05, what=f"run {run_id} to finish", child=child)
    return BillingRun.objects.get(pk=run_id)


def test_a_worker_killed_mid_chunk_on_redis_is_redelivered_to_the_next_worker(db_name, children, tmp_path):
    """acks_late on Redis: the killed worker never acknowledged the chunk, so once the
    visibility timeout has passed (3 s here; kombu's default is 3600 s) the next worker is
    handed it again; its offices already billed have nothing left to do."""
    started = time.monotonic()
    with crash.run_redis() as broker_url:
        state, _ = start_worker_run_and_kill(
            db_name=db_name,
            broker_url=broker_url,
            transport_options={},
            worker_env={},
            tmp_path=tmp_path,
            children=children,
            seed=101,
        )
        env = crash.subprocess_env(
            db_name, CELERY_BROKER_URL=broker_url, BILLING_RUN_CHUNK_SIZE=str(CHUNK_SIZE), CRASH_VISIBILITY_TIMEOUT="3"
        )
        second = crash.worker(env, tmp_path / "worker-2.log")
        children.append(second)
        run = wait_for_run_finished(state.run.pk, second)
        second.stop()
    figures = assert_recovered(state.baseline, offices=state.offices, as_of=None)
    deliveries = dict(run.chunks.values_list("seq", "deliveries"))
    print(
        f"\n[redis] {state.hit}; chunk deliveries {deliveries}; run figures: offices {run.offices_done}/"
        f"{run.offices_due}, chunks {run.chunks_done}/{run.chunks_total}, finalized {run.invoices_finalized} "
        f"(invoices actually finalized: {figures['cycles_finalized']}); {time.monotonic() - started:.1f} s"
    )
    # The killed chunk was delivered again and done once; every other chunk once.
    assert deliveries[state.chunk.seq] == 2, deliveries
    assert all(n == 1 for seq, n in deliveries.items() if seq != state.chunk.seq), deliveries
    assert not run.chunks.filter(done_at__isnull=True).exists()
    assert run.chunks_done == run.chunks_total and run.offices_done == run.offices_due == len(state.offices)
    assert run.error_count == 0
    assert_figures_count_every_invoice(run, figures, state)


def assert_figures_count_every_invoice(run: BillingRun, figures: dict[str, Any], state: WorkerCrash) -> None:
    """No double count (a redelivered chunk adds only what its own delivery did) and no
    missed count: each step adds its work to the run in its own transaction, so the steps a
    killed delivery committed are counted too (they were not, when a delivery added its
    figures only after its whole chunk)."""
    assert run.invoices_finalized == figures["cycles_finalized"], (
        run.invoices_finalized,
        figures["cycles_finalized"],
        state.hit,
    )


def test_a_worker_killed_mid_chunk_on_the_filesystem_broker_loses_the_chunk_and_the_stall_rule_recovers(
    db_name, children, tmp_path
):
    """The embedded filesystem broker (the development default) deletes a message's file
    when a worker takes it, so acks_late cannot bring back the chunk of a worker killed
    outright: no redelivery, whatever the next worker does. The run stays `running` until
    the stalled-run rule marks it failed; its offices are still due, and the next tick bills
    exactly what the lost chunk left undone."""
    started = time.monotonic()
    broker_dir = tmp_path / "broker"
    options = crash.filesystem_broker(broker_dir)
    state, _ = start_worker_run_and_kill(
        db_name=db_name,
        broker_url="filesystem://",
        transport_options=options,
        worker_env={"CRASH_BROKER_DIR": str(broker_dir)},
        tmp_path=tmp_path,
        children=children,
        seed=202,
    )
    env = crash.subprocess_env(
        db_name,
        CELERY_BROKER_URL="filesystem://",
        BILLING_RUN_CHUNK_SIZE=str(CHUNK_SIZE),
        CRASH_BROKER_DIR=str(broker_dir),
    )
    second = crash.worker(env, tmp_path / "worker-2.log")
    children.append(second)
    run = state.run

    def rest_done() -> bool:
        queued = [f for f in broker_dir.iterdir() if f.is_file()]
        undone = list(run.chunks.filter(done_at__isnull=True).values_list("seq", flat=True))
        return not queued and undone == [state.chunk.seq]

    crash.wait_until(rest_done, timeout=60, poll=0.05, what="every other chunk done, the queue empty", child=second)
    time.sleep(2.0)  # the second worker is idle: nothing comes back
    state.chunk.refresh_from_db()
    run.refresh_from_db()
    assert (state.chunk.deliveries, state.chunk.done_at) == (1, None)
    assert run.status == BillingRunStatus.RUNNING and run.chunks_done == run.chunks_total - 1
    lost_offices = set(state.chunk.office_ids)
    still_due = set(
        Invoice.objects.filter(
            kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT, period_end__lte=timezone.now()
        ).values_list("office_id", flat=True)
    )
    assert still_due and still_due <= lost_offices, (still_due, lost_offices)

    # The stalled-run rule (the hourly tick applies it with the real clock).
    stall_at = run.started_at + timedelta(minutes=django_settings.BILLING_RUN_STALL_AFTER_MINUTES, seconds=1)
    assert billing_runs_fail_stalled(now=stall_at) == [run.pk]
    run.refresh_from_db()
    assert run.status == BillingRunStatus.FAILED
    stalled = AuditEvent.objects.get(action="billing_run.stalled", target_id=str(run.pk))
    assert stalled.data["chunks_pending"] == [state.chunk.seq]

    # The next tick bills the rest, through the broker and the second worker.
    enqueue_tick("filesystem://", options)
    crash.wait_until(lambda: BillingRun.objects.count() == 2, timeout=30, what="the next tick's run", child=second)
    rescue = wait_for_run_finished(BillingRun.objects.order_by("-pk").first().pk, second)
    second.stop()
    figures = assert_recovered(state.baseline, offices=state.offices, as_of=None)
    assert rescue.offices_due == len(still_due) and rescue.offices_done == len(still_due)
    left = state.baseline.finalized_count - state.hit["cycles_committed_at_kill"]
    print(
        f"\n[filesystem] {state.hit}; lost chunk {state.chunk.seq} (deliveries 1, never done); still due after "
        f"the kill: offices {sorted(still_due)}; stalled run #{run.pk} failed, finalized {run.invoices_finalized}; "
        f"rescue run #{rescue.pk}: due {rescue.offices_due}, finalized {rescue.invoices_finalized}; "
        f"after: {figures}; {time.monotonic() - started:.1f} s"
    )
    # What each run counted: the rescue exactly the lost chunk's remaining steps; the
    # failed run everything committed under it, the killed delivery's steps included.
    assert rescue.invoices_finalized == state.baseline.finalized_count - finalized_before(rescue), (rescue, left)
    assert run.invoices_finalized + rescue.invoices_finalized == figures["cycles_finalized"]


def finalized_before(run: BillingRun) -> int:
    """Cycle invoices finalized before `run` started."""
    return (
        Invoice.objects.filter(kind=InvoiceKind.CYCLE, finalized_at__lt=run.started_at)
        .exclude(status=InvoiceStatus.DRAFT)
        .count()
    )


def test_a_pool_process_killed_mid_chunk_is_redelivered_by_its_worker(db_name, children, tmp_path):
    """reject_on_worker_lost: when the prefork pool process running the chunk dies, its
    worker sees WorkerLostError and puts the unacknowledged message back on the queue (on
    the filesystem broker too); the worker's new pool process runs the chunk again."""
    started = time.monotonic()
    broker_dir = tmp_path / "broker"
    options = crash.filesystem_broker(broker_dir)
    state, first = start_worker_run_and_kill(
        db_name=db_name,
        broker_url="filesystem://",
        transport_options=options,
        worker_env={"CRASH_BROKER_DIR": str(broker_dir), "CRASH_WORKER_LOST_WAIT": "1"},
        tmp_path=tmp_path,
        children=children,
        seed=303,
        pool="prefork",
        kill_pool_process_only=True,
    )
    run = wait_for_run_finished(state.run.pk, first)
    assert first.alive()
    first.stop()
    figures = assert_recovered(state.baseline, offices=state.offices, as_of=None)
    deliveries = dict(run.chunks.values_list("seq", "deliveries"))
    log = first.log(200_000)
    print(
        f"\n[prefork] {state.hit}; chunk deliveries {deliveries}; run figures: offices {run.offices_done}/"
        f"{run.offices_due}, finalized {run.invoices_finalized} (invoices actually finalized: "
        f"{figures['cycles_finalized']}); {time.monotonic() - started:.1f} s"
    )
    assert "WorkerLostError" in log and "SIGKILL" in log, log[-3000:]
    assert deliveries[state.chunk.seq] == 2, deliveries
    assert all(n == 1 for seq, n in deliveries.items() if seq != state.chunk.seq), deliveries
    assert run.chunks_done == run.chunks_total and run.offices_done == run.offices_due == len(state.offices)
    assert_figures_count_every_invoice(run, figures, state)


# --- 3. after pushes ----------------------------------------------------------------------


def test_every_invoice_of_a_crashed_and_rerun_billing_reaches_stripe_once(db_name, children, tmp_path, settings):
    """After a killed run and its rerun, pushing every finalized invoice (twice: the second
    pass finds nothing to do) leaves exactly one Stripe invoice per local invoice, with the
    local number and total."""
    started = time.monotonic()
    offices, _, _ = crash_and_rerun(
        KillPlan(seed=41, fault=False),
        offices_count=PUSH_OFFICES,
        db_name=db_name,
        tmp_path=tmp_path,
        children=children,
    )
    local = list(Invoice.objects.exclude(status=InvoiceStatus.DRAFT).order_by("id"))
    assert all(inv.push_state == PushState.PENDING for inv in local)  # all non-zero: nothing was marked paid
    with run_localstripe() as url, localstripe_env(settings, url):
        gateway = Gateway(client(api_base=url))
        for _ in range(2):
            for inv in local:
                pushed = invoice_push(invoice_id=inv.pk, gateway=gateway)
                assert pushed.push_state == PushState.PUSHED, (pushed.number, pushed.push_state, pushed.push_error)
        remote: dict[str, Any] = {}
        for office in offices:
            office.refresh_from_db()
            assert office.payment_provider_customer_id
            for found in gateway.invoices_list(params={"customer": office.payment_provider_customer_id, "limit": 100}):
                key = str(found["metadata"]["invoice_id"])
                assert key not in remote, f"two Stripe invoices for local invoice {key}"
                remote[key] = found
    assert set(remote) == {str(inv.pk) for inv in local}
    for inv in Invoice.objects.exclude(status=InvoiceStatus.DRAFT):
        found = remote[str(inv.pk)]
        assert (found["id"], found["number"], found["total"]) == (inv.stripe_invoice_id, inv.number, inv.total_cents)
        assert str(found["metadata"]["office_id"]) == str(inv.office_id)
    print(f"\n[push] {len(local)} local invoices, {len(remote)} Stripe invoices; {time.monotonic() - started:.1f} s")
