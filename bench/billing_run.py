"""Billing-run benchmark: N offices × M patients, one full billing cycle, figures beside a floor.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m bench.billing_run --offices 1000 --patients 100

It never touches the database DATABASE_URL names: it derives its own (PostgreSQL
`billing_bench` on the same server, created if missing; SQLite `/tmp/billing_bench.sqlite3`),
migrates it, builds the data set once with set-based SQL in the shape the services
produce, and bills the next due cycle each time it is run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import os
import pstats
import re
import resource
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
DEV_SQLITE_FILES = {BASE_DIR / "var" / "db.sqlite3", BASE_DIR / "var" / "test.sqlite3"}
PROTECTED_PG_NAMES = {"test", "postgres", "template0", "template1"}

# The data set: every office subscribed (no trial, no setup fee) at one frozen instant, long
# enough ago that many monthly runs can follow on the same data without reaching "now".
SUBSCRIBED_AT = datetime(2019, 1, 15, 15, 0, tzinfo=UTC)  # 10:00 in New York, 07:00 in Los Angeles
ACTIVATED_AT = SUBSCRIBED_AT - timedelta(days=1)  # patients onboarded the day before
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
PLAN_CODE = "bench-standard"
PER_PATIENT_CENTS = 450
MINIMUM_CENTS = 15000
MARKER_PREFIX = "billing-bench "  # Company.name = marker + "<offices>x<patients>"
RUN_DELAY = timedelta(hours=1)  # the run comes an hour after the last boundary, like the hourly beat


# --- Which database ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    vendor: str  # "postgresql" | "sqlite"
    name: str  # database name, or the SQLite file path


def _is_postgres(url: str) -> bool:
    return urlsplit(url).scheme.split("+")[0] in {"postgres", "postgresql", "pgsql", "psql"}


def resolve_target(args: argparse.Namespace) -> Target:
    """The database to bench on: derived from DATABASE_URL unless --database-url is given."""
    if args.database_url:
        url = args.database_url
        explicit = True
    else:
        url = os.environ.get("DATABASE_URL", "")
        explicit = False
    if url and _is_postgres(url):
        parts = urlsplit(url)
        name = parts.path.lstrip("/") if explicit else args.db_name
        url = urlunsplit(parts._replace(path="/" + name))
        target = Target(url=url, vendor="postgresql", name=name)
        dangerous = name in PROTECTED_PG_NAMES
    elif not url or url.startswith("sqlite"):
        path = Path(urlsplit(url).path[1:] if explicit and url else f"/tmp/{args.db_name}.sqlite3")
        target = Target(url=f"sqlite:///{path}", vendor="sqlite", name=str(path))
        dangerous = path.resolve() in {p.resolve() for p in DEV_SQLITE_FILES}
    else:
        raise SystemExit(f"unsupported DATABASE_URL scheme: {urlsplit(url).scheme!r}")
    if dangerous and not args.i_know:
        raise SystemExit(
            f"refusing to build benchmark data in {target.name!r} (a shared or development database); "
            "pass --i-know if you really mean it"
        )
    return target


def _pg_conninfo(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql", path="/" + dbname))


def prepare_database(target: Target, *, reset: bool) -> None:
    """Create the benchmark database if missing (drop it first with --reset)."""
    if target.vendor == "sqlite":
        if reset:
            for suffix in ("", "-wal", "-shm"):
                Path(target.name + suffix).unlink(missing_ok=True)
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(_pg_conninfo(target.url, "postgres"), autocommit=True) as conn:
        if reset:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.name)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [target.name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.name)))
            print(f"created database {target.name}")


def setup_django(target: Target) -> None:
    os.environ["DATABASE_URL"] = target.url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    import django

    django.setup()
    from django.conf import settings

    if settings.DEBUG:
        print("warning: DEBUG is on, Django keeps every query in memory: RSS figures are not meaningful")
    # Finalizations ask for a Stripe push after commit; the seam only logs at INFO for now.
    logging.getLogger("billing.seam").setLevel(logging.WARNING)


def migrate() -> float:
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    return time.perf_counter() - started


# --- The data set -----------------------------------------------------------------------


@dataclass
class Dataset:
    company_id: int
    plan_id: int
    offices: int
    patients: int
    built_now: bool = False
    build_steps: list[tuple[str, float]] = field(default_factory=list)


def find_dataset(offices: int, patients: int) -> Dataset | None:
    from billing.models import Plan
    from offices.models import Company

    markers = list(Company.objects.filter(name__startswith=MARKER_PREFIX))
    if not markers:
        return None
    wanted = f"{MARKER_PREFIX}{offices}x{patients}"
    if len(markers) > 1 or markers[0].name != wanted:
        held = ", ".join(m.name.removeprefix(MARKER_PREFIX) for m in markers)
        raise SystemExit(
            f"this database holds the data set {held}, not {offices}x{patients}: "
            "pass --reset to rebuild it, or --db-name to use another database"
        )
    plan = Plan.objects.get(code=PLAN_CODE)
    return Dataset(company_id=markers[0].pk, plan_id=plan.pk, offices=offices, patients=patients)


def _billing_ref_sql(vendor: str, k: str, prefix: str = "PT-") -> str:
    """A unique, opaque-looking reference: prefix + 8 hex digits of k scrambled by a
    multiplicative bijection of 32-bit integers (hex digits are in the Crockford alphabet).
    `%%` is a literal `%` in parameterized SQL on both backends."""
    scrambled = f"(({k}) * 2654435761) %% 4294967296"
    if vendor == "postgresql":
        return f"'{prefix}' || upper(lpad(to_hex({scrambled}), 8, '0'))"
    return f"printf('{prefix}%%08X', {scrambled})"


def _step(steps: list[tuple[str, float]], label: str) -> Callable[[str, list[Any]], None]:
    from django.db import connection

    def run(sql: str, params: list[Any]) -> None:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.rowcount
        steps.append((f"{label} ({rows:,} rows)", time.perf_counter() - started))

    return run


def build_dataset(offices: int, patients: int) -> Dataset:
    """N offices subscribed at SUBSCRIBED_AT in four US zones, M active patients each, and
    each office's first draft cycle with its recurring lines — the rows that
    patients.services.patient_create + billing.services.patient_activate (before the
    subscription) and billing.services.subscription_create at that frozen instant write
    (office fields, PlanChange `subscribe`, the draft Invoice, one `recurring` line per
    patient). Not written: their audit events, which the billing run does not read."""
    from django.db import connection, transaction

    from billing.engine.cycles import local_date, next_boundary_after, zone
    from billing.models import Plan
    from offices.models import Company

    ops = connection.ops
    vendor = connection.vendor
    steps: list[tuple[str, float]] = []
    dt = ops.adapt_datetimefield_value
    t0 = dt(SUBSCRIBED_AT)
    anchors = {z: local_date(SUBSCRIBED_AT, zone(z)) for z in ZONES}
    assert len(set(anchors.values())) == 1, "all zones must share the subscription's local date"
    anchor = ops.adapt_datefield_value(next(iter(anchors.values())))
    period_end = {z: dt(next_boundary_after(anchors[z], SUBSCRIBED_AT, zone(z))) for z in ZONES}
    zone_case = "CASE g.i %% 4 " + " ".join(f"WHEN {n} THEN %s" for n in range(len(ZONES))) + " END"
    end_case = "CASE o.timezone " + " ".join("WHEN %s THEN %s" for _ in ZONES) + " END"
    end_params: list[Any] = [v for z in ZONES for v in (z, period_end[z])]

    build_started = time.perf_counter()
    with transaction.atomic():
        if vendor == "postgresql":
            _skip_row_triggers(steps)
        company = Company.objects.create(name=f"{MARKER_PREFIX}{offices}x{patients}")
        plan = Plan.objects.create(
            code=PLAN_CODE,
            name="Bench standard",
            per_patient_cents=PER_PATIENT_CENTS,
            minimum_cents=MINIMUM_CENTS,
            setup_fee_cents=0,
            trial_days=0,
            locked=True,  # what subscription_create's _freeze_plan leaves
        )
        run = _step(steps, "numbers 1..max(N, M)")
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS bench_seq")
            cursor.execute("CREATE TEMPORARY TABLE bench_seq (i integer PRIMARY KEY)")
        run(
            "INSERT INTO bench_seq (i) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %s) "
            "SELECT i FROM s",
            [max(offices, patients)],
        )
        _step(steps, "offices")(
            f"""
            INSERT INTO offices_office
                (company_id, name, billing_email, timezone, subscription_status, current_plan_id, pending_plan_id,
                 billing_cycle_anchor_date, subscribed_at, trial_ends_at, trial_used, cancel_at_period_end,
                 canceled_at, past_due_since, payment_provider_customer_id, payment_provider_subscription_id,
                 collection_method, days_until_due, created_at, updated_at)
            SELECT %s, 'Bench office ' || g.i, 'billing' || g.i || '@office.example', {zone_case},
                   'active', %s, NULL, %s, %s, NULL, %s, %s, NULL, NULL, NULL, NULL,
                   'charge_automatically', 30, %s, %s
            FROM bench_seq g WHERE g.i <= %s ORDER BY g.i
            """,
            [company.pk, *ZONES, plan.pk, anchor, t0, False, False, t0, t0, offices],
        )
        _step(steps, "plan changes")(
            """
            INSERT INTO billing_planchange (office_id, plan_id, kind, requested_at, requested_by_id)
            SELECT o.id, %s, 'subscribe', %s, NULL FROM offices_office o WHERE o.company_id = %s ORDER BY o.id
            """,
            [plan.pk, t0, company.pk],
        )
        ref = _billing_ref_sql(vendor, f"o.id * {patients + 1} + g.i")
        _step(steps, "patients")(
            f"""
            INSERT INTO patients_patient
                (office_id, billing_ref, first_name, last_name, date_of_birth, mrn, email, phone, created_at)
            SELECT o.id, {ref}, 'Bench', 'Patient ' || g.i, %s, 'MRN' || g.i, '', '', %s
            FROM offices_office o CROSS JOIN bench_seq g
            WHERE o.company_id = %s AND g.i <= %s ORDER BY o.id, g.i
            """,
            [ops.adapt_datefield_value(date(1970, 1, 1)), dt(ACTIVATED_AT), company.pk, patients],
        )
        _step(steps, "activation intervals")(
            """
            INSERT INTO patients_activationinterval (patient_id, office_id, activated_at, deactivated_at)
            SELECT p.id, p.office_id, %s, NULL
            FROM patients_patient p JOIN offices_office o ON o.id = p.office_id
            WHERE o.company_id = %s ORDER BY p.id
            """,
            [dt(ACTIVATED_AT), company.pk],
        )
        subtotal = patients * PER_PATIENT_CENTS
        _step(steps, "draft invoices")(
            f"""
            INSERT INTO billing_invoice
                (office_id, kind, status, number, plan_id, is_setup_fee, period_start, period_end, currency,
                 subtotal_cents, total_cents, finalized_at, due_at, paid_at, voided_at, marked_uncollectible_at,
                 past_due_at, payment_note, stripe_invoice_id, push_state, push_attempts, push_error,
                 created_at, updated_at)
            SELECT o.id, 'cycle', 'draft', NULL, %s, %s, %s, {end_case}, 'usd', %s, %s, NULL, NULL, NULL, NULL,
                   NULL, NULL, '', NULL, 'not_required', 0, '', %s, %s
            FROM offices_office o WHERE o.company_id = %s ORDER BY o.id
            """,
            [plan.pk, False, t0, *end_params, subtotal, subtotal, t0, t0, company.pk],
        )
        _step(steps, "recurring lines")(
            """
            INSERT INTO billing_lineitem
                (invoice_id, kind, patient_id, patient_ref, description, quantity, unit_amount_cents, amount_cents,
                 created_at)
            SELECT i.id, 'recurring', p.id, p.billing_ref, 'Active patient ' || p.billing_ref, 1, %s, %s, %s
            FROM billing_invoice i
            JOIN offices_office o ON o.id = i.office_id
            JOIN patients_patient p ON p.office_id = i.office_id
            WHERE o.company_id = %s AND i.kind = 'cycle' AND i.status = 'draft'
            ORDER BY i.id, p.id
            """,
            [PER_PATIENT_CENTS, PER_PATIENT_CENTS, t0, company.pk],
        )
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE bench_seq")
    steps.append(("COMMIT and the rest", time.perf_counter() - build_started - sum(s for _, s in steps)))
    started = time.perf_counter()
    analyze()
    steps.append(("VACUUM ANALYZE" if vendor == "postgresql" else "ANALYZE", time.perf_counter() - started))
    return Dataset(
        company_id=company.pk, plan_id=plan.pk, offices=offices, patients=patients, built_now=True, build_steps=steps
    )


def _skip_row_triggers(steps: list[tuple[str, float]]) -> None:
    """Bulk-load practice: no per-row foreign-key checks or guard triggers for this
    transaction (every id is selected from its parent table, so the keys hold by
    construction). Needs a superuser; without one the checks simply run at COMMIT."""
    from django.db import connection, transaction

    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
    except Exception as exc:  # not a superuser: keep the checks
        steps.append((f"(row triggers kept: {type(exc).__name__})", 0.0))


def analyze() -> None:
    """Fresh planner statistics, as a production database has (autovacuum may lag a bulk load)."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
        else:
            cursor.execute("ANALYZE")


# --- What the services path would cost (setup, measured on a sample, rolled back) --------


class _Rollback(Exception):
    pass


@dataclass
class ServicesEstimate:
    sample: int
    subscribe_s_per_office: float
    patient_s_per_patient: float
    patients_sampled: int


def estimate_services_build(*, sample: int, patients: int) -> ServicesEstimate | None:
    """Time billing.services.subscription_create (which opens the first cycle with M
    recurring lines) and patient_create + patient_activate on a sample, inside one
    transaction that is rolled back: a lower bound (no commit, no audit seal per call)."""
    if sample <= 0:
        return None
    from django.db import connection, transaction

    from billing.services import patient_activate, subscription_create
    from offices.models import Company, Office
    from patients.services import patient_create

    result: ServicesEstimate | None = None
    try:
        with transaction.atomic():
            company = Company.objects.create(name="bench services sample")
            offices = Office.objects.bulk_create(
                Office(company=company, name=f"Sample office {i}", billing_email=f"s{i}@office.example")
                for i in range(sample + 1)
            )
            ref = _billing_ref_sql(connection.vendor, "o.id * 100003 + g", prefix="PS-")
            with connection.cursor() as cursor:
                # M patients per sample office, activated before subscribing (onboarding).
                if connection.vendor == "postgresql":
                    series = "generate_series(1, %s) AS s(g)"
                else:
                    series = (
                        "(WITH RECURSIVE r(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM r WHERE g < %s) "
                        "SELECT g FROM r) s"
                    )
                cursor.execute(
                    f"""
                    INSERT INTO patients_patient
                        (office_id, billing_ref, first_name, last_name, date_of_birth, mrn, email, phone, created_at)
                    SELECT o.id, {ref}, 'Sample', 'Patient', %s, 'MRN' || g, '', '', %s
                    FROM offices_office o CROSS JOIN {series}
                    WHERE o.company_id = %s AND o.id <> %s
                    """,
                    [
                        connection.ops.adapt_datefield_value(date(1970, 1, 1)),
                        connection.ops.adapt_datetimefield_value(ACTIVATED_AT),
                        patients,
                        company.pk,
                        offices[-1].pk,
                    ],
                )
                cursor.execute(
                    """
                    INSERT INTO patients_activationinterval (patient_id, office_id, activated_at, deactivated_at)
                    SELECT p.id, p.office_id, %s, NULL FROM patients_patient p
                    JOIN offices_office o ON o.id = p.office_id WHERE o.company_id = %s
                    """,
                    [connection.ops.adapt_datetimefield_value(ACTIVATED_AT), company.pk],
                )
            started = time.perf_counter()
            for office in offices[:-1]:
                subscription_create(office=office, plan_code=PLAN_CODE)
            subscribe = (time.perf_counter() - started) / sample
            # Patients through the services, on the last (unsubscribed) office.
            last = offices[-1]
            n_patients = min(50, max(patients, 1))
            started = time.perf_counter()
            for i in range(n_patients):
                patient = patient_create(
                    office=last, first_name="Sample", last_name="Patient", date_of_birth=date(1970, 1, 1), mrn=f"S{i}"
                )
                patient_activate(patient=patient)
            per_patient = (time.perf_counter() - started) / n_patients
            result = ServicesEstimate(
                sample=sample,
                subscribe_s_per_office=subscribe,
                patient_s_per_patient=per_patient,
                patients_sampled=n_patients,
            )
            raise _Rollback
    except _Rollback:
        pass
    return result


# --- Measuring the run -------------------------------------------------------------------

# (label, predicate on the lower-cased SQL); the first that matches wins.
CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    # lock_office: FOR UPDATE on PostgreSQL; a plain .get() on SQLite, where the lock is a no-op.
    (
        "lock office (SELECT … FOR UPDATE)",
        lambda s: 'from "offices_office"' in s and ("for update" in s or "limit 21" in s),
    ),
    ("offices_due (2 queries per run)", lambda s: '"period_end" <=' in s or '"trial_ends_at" <=' in s),
    # django-auditlog's pre_save reads the stored row by primary key to diff it.
    (
        "django-auditlog (pre-save read, LogEntry)",
        lambda s: (
            "auditlog_logentry" in s
            or "django_content_type" in s
            or (s.startswith('select "billing_invoice"') and 'where "billing_invoice"."id" = %s' in s)
        ),
    ),
    (
        "current_draft (SELECT draft)",
        lambda s: s.startswith('select "billing_invoice"') and 'from "billing_invoice"' in s and "limit 1" in s,
    ),
    ("open: first-cycle-ever EXISTS", lambda s: 'as "a" from "billing_invoice"' in s),
    ("plan load (invoice.plan)", lambda s: s.startswith("select") and 'from "billing_plan"' in s),
    ("open: plan_in_force (PlanChange)", lambda s: "billing_planchange" in s),
    ("finalize: reconcile DELETE", lambda s: s.startswith("delete from billing_lineitem")),
    (
        "finalize: reconcile INSERT…SELECT",
        lambda s: s.startswith("insert into billing_lineitem") and "case when exists" in s,
    ),
    ("open: recurring INSERT…SELECT", lambda s: s.startswith("insert into billing_lineitem")),
    ("finalize: reconcile kind UPDATE", lambda s: s.startswith("update billing_lineitem")),
    ("finalize: minimum line INSERT", lambda s: s.startswith('insert into "billing_lineitem"')),
    ("refresh_totals (SUM)", lambda s: 'sum("billing_lineitem"."amount_cents")' in s),
    ("finalize: line COUNT", lambda s: "count(*)" in s and '"billing_lineitem"' in s),
    ("finalize: invoice number", lambda s: "billing_invoicenumbersequence" in s),
    ("open: INSERT invoice", lambda s: s.startswith('insert into "billing_invoice"')),
    ("UPDATE invoice (finalize save, open totals)", lambda s: s.startswith('update "billing_invoice"')),
    ("UPDATE office", lambda s: s.startswith('update "offices_office"')),
    ("audit_record INSERT", lambda s: s.startswith('insert into "audit_auditevent"')),
    ("audit seal (after each commit)", lambda s: "audit_auditchainhead" in s or '"audit_auditevent"' in s),
    ("run bookkeeping (BillingRun)", lambda s: "billing_billingrun" in s),
    ("savepoints", lambda s: s.startswith(("savepoint", "release savepoint", "rollback to savepoint"))),
    ("BEGIN IMMEDIATE (SQLite)", lambda s: s.startswith("begin")),
]
COMMIT = "COMMIT (WAL flush)"


_classified: dict[str, str] = {}


def classify(sql: str) -> str:
    """The statement's phase (cached: the ORM's SQL text repeats, parameters are apart)."""
    label = _classified.get(sql)
    if label is None:
        s = " ".join(sql.split()).lower()
        label = next((name for name, matches in CATEGORIES if matches(s)), "other: " + s[:60])
        if len(_classified) < 10_000:
            _classified[sql] = label
    return label


@dataclass
class Meter:
    """Counts and times every SQL statement and every COMMIT of the default connection."""

    count: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    sample: list[tuple[str, float]] | None = None  # the statements of one office, in order

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self._add(classify(sql), time.perf_counter() - started)

    def _add(self, label: str, seconds: float) -> None:
        self.count[label] += 1
        self.seconds[label] += seconds
        if self.sample is not None:
            self.sample.append((label, seconds))

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from django.db import connections

        conn = connections["default"]
        original = conn._commit

        def timed_commit() -> Any:
            started = time.perf_counter()
            try:
                return original()
            finally:
                self._add(COMMIT, time.perf_counter() - started)

        conn._commit = timed_commit  # type: ignore[method-assign]
        try:
            with conn.execute_wrapper(self):
                yield
        finally:
            del conn._commit  # back to the class's method


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process on this machine (the PostgreSQL backend runs here too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> tuple[float, float]:
    """(this process's CPU seconds, the database backend's CPU seconds or NaN on SQLite).
    CPU time is what a busy, shared machine inflates least: wall time includes waiting."""
    from django.db import connection

    usage = resource.getrusage(resource.RUSAGE_SELF)
    client = usage.ru_utime + usage.ru_stime
    if connection.vendor != "postgresql":
        return client, float("nan")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    return client, _proc_cpu_seconds(pid)


@dataclass
class RunResult:
    as_of: datetime
    wall: float
    offices_due: int
    offices_done: int
    finalized: int
    opened: int
    lines: int
    errors: int
    meter: Meter
    per_office_ms: list[float]
    rss_before: float
    rss_after: float
    peak_before: float
    peak_after: float
    client_cpu: float
    server_cpu: float
    load: tuple[float, float, float]
    profile: cProfile.Profile | None


def next_as_of() -> datetime:
    from django.db.models import Max, Min
    from django.utils import timezone

    from billing.models import Invoice, InvoiceKind, InvoiceStatus

    agg = Invoice.objects.filter(kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT).aggregate(
        lo=Min("period_end"), hi=Max("period_end")
    )
    if agg["hi"] is None:
        raise SystemExit("no draft cycle to bill in this database: pass --reset to rebuild the data set")
    if agg["hi"] - agg["lo"] > timedelta(days=1):
        raise SystemExit("the drafts are not on one boundary (a partial run?): pass --reset to rebuild")
    as_of = agg["hi"] + RUN_DELAY
    if as_of > timezone.now():
        raise SystemExit(f"the data set has been billed up to {agg['hi']:%Y-%m-%d}: pass --reset to rebuild it")
    return as_of


def measure_run(*, as_of: datetime, profile: bool) -> RunResult:
    from django.db import reset_queries

    from billing.engine.office import AdvanceStats
    from billing.engine.run import billing_run

    meter = Meter()
    per_office: list[float] = []
    clock = [0.0]
    first_office_sample: list[tuple[str, float]] = []

    def on_start(_due: int) -> None:
        meter.sample = []  # capture the first office's statements
        clock[0] = time.perf_counter()

    def progress(_office_id: int, _stats: AdvanceStats) -> None:
        now = time.perf_counter()
        per_office.append((now - clock[0]) * 1000)
        clock[0] = now
        if meter.sample is not None and len(per_office) == 1:
            first_office_sample[:] = meter.sample
            meter.sample = None

    reset_queries()
    rss_before, peak_before = rss_mib(), peak_rss_mib()
    profiler = cProfile.Profile() if profile else None
    cpu_before = cpu_snapshot()
    with meter.installed():
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        run = billing_run(as_of=as_of, trigger="bench", progress=progress, on_start=on_start)
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - started
    cpu_after = cpu_snapshot()
    load = os.getloadavg()
    meter.sample = first_office_sample
    return RunResult(
        as_of=as_of,
        wall=wall,
        offices_due=run.offices_due,
        offices_done=run.offices_done,
        finalized=run.invoices_finalized,
        opened=run.invoices_opened,
        lines=run.lines_created,
        errors=run.error_count,
        meter=meter,
        per_office_ms=per_office,
        rss_before=rss_before,
        rss_after=rss_mib(),
        peak_before=peak_before,
        peak_after=peak_rss_mib(),
        client_cpu=cpu_after[0] - cpu_before[0],
        server_cpu=cpu_after[1] - cpu_before[1],
        load=load,
        profile=profiler,
    )


# --- The floor ---------------------------------------------------------------------------

FLOOR_TABLE = "bench_floor_lineitem"
FLOOR_COLUMNS = (
    "invoice_id, kind, patient_id, patient_ref, description, quantity, unit_amount_cents, amount_cents, created_at"
)
FLOOR_SELECT = """
    SELECT i.id, 'recurring', p.id, p.billing_ref, 'Active patient ' || p.billing_ref, 1,
           pl.per_patient_cents, pl.per_patient_cents, %s
    FROM billing_invoice i
    JOIN billing_plan pl ON pl.id = i.plan_id
    JOIN patients_activationinterval a ON a.office_id = i.office_id AND a.activated_at <= i.period_start
         AND (a.deactivated_at IS NULL OR a.deactivated_at > i.period_start)
    JOIN patients_patient p ON p.id = a.patient_id
    WHERE i.kind = 'cycle' AND i.status = 'draft'
"""
FLOOR_VARIANTS = (
    ("floor: one INSERT…SELECT (copy: keys, checks, indexes)", False, False),
    ("  same + the two foreign keys", True, False),
    ("  same + FKs + INSERT guard trigger (= billing_lineitem)", True, True),
)
_SQLITE_FK = re.compile(r'\s*REFERENCES\s+"\w+"\s*\("\w+"\)(\s*DEFERRABLE INITIALLY DEFERRED)?', re.IGNORECASE)


@dataclass
class Floor:
    variants: list[tuple[str, int, float]]  # (label, rows, seconds)
    server_cpu: float  # the bare variant's backend CPU seconds

    @property
    def rows(self) -> int:
        return self.variants[0][1]

    @property
    def seconds(self) -> float:
        return self.variants[0][2]


def _create_floor_table(*, foreign_keys: bool, guard: bool) -> None:
    """A scratch copy of billing_lineitem: same columns, primary key, checks and indexes;
    optionally its foreign keys and its INSERT guard trigger (line_insert_only_on_draft)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")
        if connection.vendor == "postgresql":
            cursor.execute(f"CREATE TABLE {FLOOR_TABLE} (LIKE billing_lineitem INCLUDING ALL)")
            if foreign_keys:
                cursor.execute(
                    f"ALTER TABLE {FLOOR_TABLE} "
                    "ADD FOREIGN KEY (invoice_id) REFERENCES billing_invoice (id) DEFERRABLE INITIALLY DEFERRED, "
                    "ADD FOREIGN KEY (patient_id) REFERENCES patients_patient (id) DEFERRABLE INITIALLY DEFERRED"
                )
            if guard:
                cursor.execute(
                    f"CREATE TRIGGER bench_floor_guard BEFORE INSERT ON {FLOOR_TABLE} "
                    "FOR EACH ROW EXECUTE FUNCTION line_insert_only_on_draft_fn()"
                )
            return
        # SQLite: replay billing_lineitem's own DDL under new names (its foreign keys are inline).
        cursor.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'billing_lineitem' AND sql IS NOT NULL "
            "ORDER BY type = 'table' DESC"
        )
        for kind, name, ddl in cursor.fetchall():
            if kind == "trigger" and not (guard and " INSERT " in ddl.upper()):
                continue
            if kind == "table" and not foreign_keys:
                ddl = _SQLITE_FK.sub("", ddl)
            if kind in ("index", "trigger"):
                ddl = ddl.replace(name, f"bench_{name}", 1)
            cursor.execute(ddl.replace("billing_lineitem", FLOOR_TABLE))


def _time_floor_insert() -> tuple[int, float]:
    from django.db import connection, transaction
    from django.utils import timezone

    now = connection.ops.adapt_datetimefield_value(timezone.now())
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:  # the statement and its commit
        cursor.execute(f"INSERT INTO {FLOOR_TABLE} ({FLOOR_COLUMNS}) {FLOOR_SELECT}", [now])
        rows = cursor.rowcount
    return rows, time.perf_counter() - started


def measure_floor() -> Floor:
    """One INSERT … SELECT writing a recurring line for every patient active at the start
    of every office's new draft — what the run's opens wrote, in one statement — into a
    scratch copy of billing_lineitem, bare and then with the real table's FKs and guard."""
    from django.db import connection

    with connection.cursor() as cursor:  # same cache state as the run left: read it once first
        cursor.execute(f"SELECT count(*) FROM ({FLOOR_SELECT}) AS warm", [None])
    variants = []
    server_cpu = float("nan")
    for label, foreign_keys, guard in FLOOR_VARIANTS:
        _create_floor_table(foreign_keys=foreign_keys, guard=guard)
        before = cpu_snapshot()[1]
        rows, seconds = _time_floor_insert()
        if not variants:
            server_cpu = cpu_snapshot()[1] - before
        variants.append((label, rows, seconds))
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {FLOOR_TABLE}")
    return Floor(variants=variants, server_cpu=server_cpu)


# --- Report ------------------------------------------------------------------------------


def server_facts() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
                "current_setting('synchronous_commit'), current_setting('fsync')"
            )
            version, buffers, sync, fsync = cursor.fetchone()
            return f"PostgreSQL {version}, shared_buffers={buffers}, synchronous_commit={sync}, fsync={fsync}"
        cursor.execute("SELECT sqlite_version()")
        return f"SQLite {cursor.fetchone()[0]} (WAL)"


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(
    *,
    target: Target,
    dataset: Dataset,
    services: ServicesEstimate | None,
    run: RunResult,
    floor: Floor | None,
    top: int,
) -> None:
    print()
    print(f"billing run benchmark — {target.vendor} {target.name} ({server_facts()})")
    print(
        f"data set: {dataset.offices:,} offices × {dataset.patients:,} patients "
        f"= {dataset.offices * dataset.patients:,} active patients, zones {', '.join(ZONES)}"
    )
    if dataset.built_now:
        total = sum(s for _, s in dataset.build_steps)
        print(f"data build (setup, not measured): {total:.1f} s")
        for label, seconds in dataset.build_steps:
            print(f"    {seconds:8.2f} s  {label}")
    if services is not None:
        n, m = dataset.offices, dataset.patients
        print(
            f"the services path instead (sample, rolled back, no commits): subscription_create "
            f"{services.subscribe_s_per_office * 1000:.1f} ms/office (opening {m} lines) → "
            f"{services.subscribe_s_per_office * n:,.0f} s for {n:,} offices; patient_create + patient_activate "
            f"{services.patient_s_per_patient * 1000:.2f} ms/patient → {services.patient_s_per_patient * n * m:,.0f} s "
            f"for {n * m:,} patients"
        )
    profiled = " (under cProfile: slower than a plain run)" if run.profile else ""
    print(f"run as of {run.as_of.isoformat()}{profiled}")
    meter = run.meter
    queries = sum(c for label, c in meter.count.items() if label != COMMIT)
    commits = meter.count[COMMIT]
    sql_seconds = sum(s for label, s in meter.seconds.items() if label != COMMIT)
    offices = max(run.offices_done, 1)
    sample_queries = sum(1 for label, _ in (meter.sample or []) if label != COMMIT)
    sample_commits = sum(1 for label, _ in (meter.sample or []) if label == COMMIT)
    rows: list[tuple[str, str]] = [
        ("offices due / billed / errors", f"{run.offices_due:,} / {run.offices_done:,} / {run.errors}"),
        ("invoices finalized / opened", f"{run.finalized:,} / {run.opened:,}"),
        ("lines created", f"{run.lines:,}"),
        ("wall time", f"{run.wall:.2f} s"),
        ("offices/s", f"{run.offices_done / run.wall:,.1f}"),
        ("lines/s", f"{run.lines / run.wall:,.0f}"),
        (
            "per office p50 / p95 / max",
            f"{_pct(run.per_office_ms, 0.5):.1f} / {_pct(run.per_office_ms, 0.95):.1f} / "
            f"{max(run.per_office_ms, default=float('nan')):.1f} ms",
        ),
        ("SQL statements (run)", f"{queries:,} ({queries / offices:.1f} per office)"),
        ("SQL statements, first office", f"{sample_queries} + {sample_commits} COMMITs"),
        ("COMMITs (run)", f"{commits:,} ({commits / offices:.1f} per office)"),
        (
            "time in SQL / in COMMIT / in Python",
            f"{sql_seconds:.1f} / {meter.seconds[COMMIT]:.1f} / {run.wall - sql_seconds - meter.seconds[COMMIT]:.1f} s",
        ),
        (
            "CPU: this process / database backend",
            f"{run.client_cpu:.1f} / {run.server_cpu:.1f} s"
            if run.server_cpu == run.server_cpu
            else f"{run.client_cpu:.1f} s (SQLite runs in this process)",
        ),
        (
            "load average at the end (1/5/15 min)",
            " / ".join(f"{x:.1f}" for x in run.load) + f" on {os.cpu_count()} CPUs",
        ),
        ("RSS before → after run", f"{run.rss_before:.0f} → {run.rss_after:.0f} MiB"),
        ("peak RSS (getrusage) before → after", f"{run.peak_before:.0f} → {run.peak_after:.0f} MiB"),
    ]
    if floor is not None:
        for label, n, seconds in floor.variants:
            rows.append((label, f"{seconds:.2f} s for {n:,} lines ({n / seconds:,.0f} lines/s)"))
        full = floor.variants[-1][2]
        rows.append(
            ("ratio run / floor", f"{run.wall / floor.seconds:,.1f}× (vs the guarded floor {run.wall / full:,.1f}×)")
        )
        if floor.server_cpu == floor.server_cpu:  # not NaN: PostgreSQL, backend CPU is readable
            run_cpu = run.client_cpu + run.server_cpu
            rows.append(
                (
                    "CPU ratio: run (process + backend) / floor",
                    f"{run_cpu:.1f} / {floor.server_cpu:.2f} s = {run_cpu / max(floor.server_cpu, 0.01):,.1f}×",
                )
            )
    print(_table(rows, ("figure", "value")))
    print()
    print("where the run's time goes (measured around each statement and COMMIT; the rest is Python/Django):")
    breakdown: list[tuple[str, ...]] = []
    for label, seconds in sorted(meter.seconds.items(), key=lambda kv: -kv[1]):
        count = meter.count[label]
        breakdown.append(
            (
                label,
                f"{count:,}",
                f"{count / offices:.2f}",
                f"{seconds:.2f}",
                f"{seconds / offices * 1000:.3f}",
                f"{seconds / run.wall * 100:.1f}%",
            )
        )
    python = run.wall - sum(meter.seconds.values())
    breakdown.append(
        (
            "Python/Django outside SQL",
            "",
            "",
            f"{python:.2f}",
            f"{python / offices * 1000:.3f}",
            f"{python / run.wall * 100:.1f}%",
        )
    )
    print(_table(breakdown, ("phase", "statements", "/office", "seconds", "ms/office", "share")))
    if meter.sample:
        print()
        print("statements of the first office, in order:")
        for label, seconds in meter.sample:
            print(f"    {seconds * 1000:7.3f} ms  {label}")
    if run.profile is not None:
        print_profile(run.profile, top=top, path=Path(f"/tmp/{Path(target.name).stem}.prof"))


def print_profile(profiler: cProfile.Profile, *, top: int, path: Path) -> None:
    profiler.dump_stats(path)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(re.escape(str(BASE_DIR)) + r"/(billing|audit|offices|patients)/", top)
    stats.sort_stats("tottime").print_stats(top)
    print()
    print(f"cProfile (also saved to {path}; project functions by cumulative time, then all by own time):")
    text = out.getvalue().replace(str(BASE_DIR) + "/", "")
    print("\n".join(line for line in text.splitlines() if line.strip() and not line.startswith("   Ordered by")))


# --- Main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.billing_run",
        description="Build N offices × M patients, run one billing cycle, print figures beside a floor.",
    )
    parser.add_argument("--offices", type=int, default=1000, help="number of offices (N, default 1000)")
    parser.add_argument("--patients", type=int, default=100, help="active patients per office (M, default 100)")
    parser.add_argument("--db-name", default="billing_bench", help="benchmark database name (default billing_bench)")
    parser.add_argument(
        "--database-url", help="use exactly this database instead of deriving one from DATABASE_URL (see --i-know)"
    )
    parser.add_argument("--i-know", action="store_true", help="allow a shared/development database")
    parser.add_argument("--reset", action="store_true", help="drop and recreate the benchmark database first")
    parser.add_argument(
        "--services-sample",
        type=int,
        default=10,
        help="offices subscribed through the services (rolled back) to estimate that path (0: skip; default 10)",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    parser.add_argument("--profile", action="store_true", help="run under cProfile and print where the time goes")
    parser.add_argument("--top", type=int, default=30, help="rows of cProfile output (default 30)")
    args = parser.parse_args(argv)
    if args.offices < 1 or args.patients < 1:
        parser.error("--offices and --patients must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = resolve_target(args)
    prepare_database(target, reset=args.reset)
    setup_django(target)
    seconds = migrate()
    if seconds > 1:
        print(f"migrated {target.name} in {seconds:.1f} s")
    dataset = find_dataset(args.offices, args.patients)
    if dataset is None:
        print(f"building {args.offices:,} offices × {args.patients:,} patients in {target.name} …", flush=True)
        dataset = build_dataset(args.offices, args.patients)
    services = estimate_services_build(sample=args.services_sample, patients=args.patients)
    as_of = next_as_of()
    print(f"running billing as of {as_of.isoformat()} …", flush=True)
    run = measure_run(as_of=as_of, profile=args.profile)
    floor = None if args.no_floor else measure_floor()
    report(target=target, dataset=dataset, services=services, run=run, floor=floor, top=args.top)
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
