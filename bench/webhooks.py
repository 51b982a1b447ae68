"""Webhook-ingestion benchmark: signed `invoice.paid` under gunicorn, beside a minimal handler.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m bench.webhooks --offices 100 --rounds 3

It never touches the database DATABASE_URL names: it (re)builds its own (`webhooks_bench` on
the same server), starts a localstripe of its own, seeds N billed offices whose invoices are
pushed to it and paid there, then serves `config.wsgi`'s Django application and a minimal
correct handler (below) with gunicorn (2 sync workers each) and fires the same signed events
at both with 16 concurrent clients, alternating rounds. It prints figures and asserts
nothing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import hashlib
import hmac
import http.client
import io
import json
import os
import pstats
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.billing_run import BASE_DIR, Target, _pg_conninfo, prepare_database, resolve_target

WEBHOOK_PATH = "/stripe/webhook/"
BROKER_ENV = "BENCH_WEBHOOKS_BROKER_DIR"
SETTINGS_MODULE = "config.settings.test"  # DEBUG off; plain http:// to localstripe allowed
CONN_MAX_AGE = "60"


# --- Settings shared by this process and the gunicorn workers ----------------------------


def _env(*, database_url: str, stripe_url: str, secret: str, broker_dir: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": CONN_MAX_AGE,
        "STRIPE_API_BASE": stripe_url,
        "STRIPE_WEBHOOK_SECRET": secret,
        "STRIPE_WEBHOOK_SECRET_NEXT": "",
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        BROKER_ENV: broker_dir,
    }


def django_setup(*, push_enabled: bool) -> None:
    """The test settings (DEBUG off, localstripe over http allowed) with what production
    has on: STRIPE_PUSH_ENABLED, so dj-stripe's mirror is a task (an embedded filesystem
    broker of this run's own; no worker consumes it: ingestion is what is measured)."""
    import django
    from django.conf import settings

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    settings.STRIPE_PUSH_ENABLED = push_enabled
    broker = os.environ.get(BROKER_ENV)
    if broker:
        settings.CELERY_BROKER_URL = "filesystem://"
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
            "data_folder_in": broker,
            "data_folder_out": broker,
            "processed_folder": broker,
            "store_processed": False,
        }
    django.setup()


def project_app() -> Any:
    """gunicorn: `bench.webhooks:project_app()` — the project's Django application."""
    django_setup(push_enabled=True)
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


# --- The minimal correct handler -------------------------------------------------------------


def minimal_app() -> Callable[..., Any]:
    """gunicorn: `bench.webhooks:minimal_app()`. Verify the signature (HMAC-SHA256 of
    "t.body", tolerance both ways), record the event id once (INSERT … ON CONFLICT), lock
    and update the one invoice row, append one audit row; one transaction, one connection
    per worker kept open."""
    import psycopg

    secret = os.environ["STRIPE_WEBHOOK_SECRET"].encode()
    conninfo = _pg_conninfo(os.environ["DATABASE_URL"], urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/"))
    local = threading.local()

    def connection() -> psycopg.Connection[Any]:
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = local.conn = psycopg.connect(conninfo)
        return conn

    def answer(start: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body).encode()
        start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> list[bytes]:
        if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != WEBHOOK_PATH:
            return answer(start, "404 Not Found", {"error": "not found"})
        size = int(environ.get("CONTENT_LENGTH") or 0)
        if size > 1024 * 1024:
            return answer(start, "413 Payload Too Large", {"error": "body too large"})
        body = environ["wsgi.input"].read(size)
        header = environ.get("HTTP_STRIPE_SIGNATURE", "")
        parts = [item.partition("=") for item in header.split(",")]
        stamps = [v for k, _, v in parts if k.strip() == "t"]
        sigs = [v for k, _, v in parts if k.strip() == "v1"]
        if len(stamps) != 1 or not stamps[0].isdigit() or not sigs:
            return answer(start, "400 Bad Request", {"error": "malformed signature header"})
        expected = hmac.new(secret, stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(expected, s) for s in sigs) or abs(time.time() - int(stamps[0])) > 300:
            return answer(start, "400 Bad Request", {"error": "signature"})
        event = json.loads(body)
        obj = event["data"]["object"]
        conn = connection()
        with conn.transaction():
            inserted = conn.execute(
                "INSERT INTO bench_min_event (event_id, type, received_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (event_id) DO NOTHING RETURNING id",
                [event["id"], event["type"]],
            ).fetchone()
            if inserted is None:
                return answer(start, "200 OK", {"received": True, "status": "duplicate"})
            row = conn.execute(
                "SELECT id, status FROM billing_invoice WHERE stripe_invoice_id = %s FOR UPDATE", [obj["id"]]
            ).fetchone()
            outcome = "ignored"
            if row is not None and row[1] in ("open", "uncollectible"):
                conn.execute(
                    "UPDATE billing_invoice SET status = 'paid', paid_at = now(), updated_at = now() WHERE id = %s",
                    [row[0]],
                )
                conn.execute(
                    "INSERT INTO bench_min_audit (ts, action, target_id, data) VALUES (now(), %s, %s, %s)",
                    ["payment.succeeded", str(row[0]), json.dumps({"event_id": event["id"]})],
                )
                outcome = "paid"
        return answer(start, "200 OK", {"received": True, "status": "processed", "outcome": outcome})

    return app


MINIMAL_DDL = [
    "CREATE TABLE IF NOT EXISTS bench_min_event (id bigserial PRIMARY KEY, event_id varchar(255) NOT NULL UNIQUE, "
    "type varchar(100) NOT NULL, received_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_min_audit (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, "
    "action varchar(100) NOT NULL, target_id varchar(64) NOT NULL, data jsonb NOT NULL)",
]


# --- The database: rebuilt every run (localstripe starts empty), cloned from a template ---------


def _template_name(target: Target) -> str:
    return f"{target.name}_template"


def prepare_from_template(target: Target) -> bool:
    """Drop the benchmark database and recreate it, from the migrated template a previous
    run left (migrating from nothing takes about a minute; `migrate` then applies only what
    is new). True if cloned."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(_pg_conninfo(target.url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.name)))
        template = _template_name(target)
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template]).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(target.name), sql.Identifier(template))
            )
            return True
    prepare_database(target, reset=False)
    return False


def save_template(target: Target) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_pg_conninfo(target.url, "postgres"), autocommit=True) as conn:
        template = _template_name(target)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(template)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(template), sql.Identifier(target.name))
        )


# --- Seeding -----------------------------------------------------------------------------


@dataclass
class Seed:
    invoice_ids: list[int]
    payloads: list[dict[str, Any]]  # localstripe's own invoice.paid events, one per invoice
    seconds: float


def seed(*, stripe_url: str, offices: int) -> Seed:
    """N offices billed through the services (spec §11 example 1: a setup-fee and a cycle
    invoice each), each with a default card in localstripe, their invoices pushed with the
    real gateway: localstripe charges them on finalize and records `invoice.paid`."""
    from billing.models import Invoice
    from billing.stripe.gateway import Gateway
    from billing.tests.support.stripe_helpers import billed_office, push_all, stripe_get, with_card

    started = time.perf_counter()
    gateway = Gateway()
    stripe_ids: dict[str, int] = {}
    for n in range(offices):
        office = billed_office(patients=3, name=f"Webhook bench {n}")
        with_card(stripe_url, office, gateway)
        for invoice in push_all(office, gateway):
            stripe_ids[str(invoice.stripe_invoice_id)] = invoice.pk
        if (n + 1) % 25 == 0:
            print(f"  seeded {n + 1}/{offices} offices ({time.perf_counter() - started:.0f} s)", flush=True)
    payloads: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 120  # localstripe collects charge_automatically invoices asynchronously
    while len(payloads) < len(stripe_ids) and time.monotonic() < deadline:
        params: dict[str, Any] = {"limit": 100, "type": "invoice.paid"}
        while True:
            page = stripe_get(stripe_url, "/v1/events", **params)
            for event in page["data"]:
                obj = event["data"]["object"]
                if event["type"] == "invoice.paid" and obj.get("id") in stripe_ids:
                    payloads.setdefault(obj["id"], event)
            if not page["has_more"] or not page["data"]:
                break
            params["starting_after"] = page["data"][-1]["id"]
        if len(payloads) < len(stripe_ids):
            time.sleep(0.5)
    missing = set(stripe_ids) - set(payloads)
    if missing:
        raise SystemExit(f"localstripe recorded no invoice.paid for {len(missing)} invoices (e.g. {min(missing)})")
    open_ids = set(Invoice.objects.filter(pk__in=stripe_ids.values(), status="open").values_list("pk", flat=True))
    ordered = [(stripe_ids[sid], payloads[sid]) for sid in sorted(payloads) if stripe_ids[sid] in open_ids]
    return Seed(
        invoice_ids=[pk for pk, _ in ordered],
        payloads=[event for _, event in ordered],
        seconds=time.perf_counter() - started,
    )


def reset_invoices(invoice_ids: list[int]) -> None:
    """Back to open, as they were before the round's events (no guard forbids paid → open)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE billing_invoice SET status = 'open', paid_at = NULL WHERE id = ANY(%s)", [invoice_ids])


_serial = iter(range(1, 10**9))


def fresh_event(template: dict[str, Any], tag: str) -> bytes:
    """The recorded event with a new id and creation time (each id is delivered once),
    serialized as Stripe sends it (indented JSON)."""
    event = copy.deepcopy(template)
    event["id"] = f"evt_bench{tag}{next(_serial):08d}{secrets.token_hex(4)}"
    event["created"] = int(time.time())
    return json.dumps(event, indent=2).encode()


def sign(body: bytes, secret: str) -> str:
    t = int(time.time())
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


# --- Servers -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gunicorn(app: str, env: dict[str, str], *, workers: int, log: Path) -> Iterator[int]:
    port = _free_port()
    argv = [
        str(Path(sys.executable).with_name("gunicorn")),
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--backlog",
        "2048",
        "--timeout",
        "120",
        "--chdir",
        str(BASE_DIR),
        app,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"gunicorn {app} exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _post(port: int, body: bytes, header: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(
            "POST",
            WEBHOOK_PATH,
            body=body,
            headers={"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def warm(port: int, secret: str) -> None:
    """One request per worker and then some: imports, URL resolver, first connections."""
    body = json.dumps({"object": "event", "id": "evt_warm", "type": "ping"}).encode()
    for _ in range(8):
        _post(port, body, "t=0,v1=00")  # rejected (too old / mismatch): warms every layer before the view


# --- A round: every invoice once, 16 clients ----------------------------------------------------


@dataclass
class Round:
    seconds: float
    latencies: list[float]
    statuses: Counter[str]


def fire(port: int, bodies: list[bytes], secret: str, *, concurrency: int) -> Round:
    pending = list(reversed(bodies))
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    def client() -> None:
        while True:
            with lock:
                if not pending:
                    return
                body = pending.pop()
            header = sign(body, secret)
            started = time.perf_counter()
            status, answer = _post(port, body, header)
            elapsed = time.perf_counter() - started
            try:
                what = json.loads(answer).get("outcome") or json.loads(answer).get("status") or ""
            except ValueError:
                what = "?"
            with lock:
                latencies.append(elapsed)
                statuses[f"{status} {what}"] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Round(seconds=time.perf_counter() - started, latencies=latencies, statuses=statuses)


@dataclass
class Totals:
    name: str
    rounds: list[Round] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(r.latencies) for r in self.rounds)

    @property
    def rate(self) -> float:
        return self.events / sum(r.seconds for r in self.rounds)

    def pct(self, q: float) -> float:
        values = sorted(v for r in self.rounds for v in r.latencies)
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def statuses(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.rounds:
            total.update(r.statuses)
        return total


# --- Statements per event (in process, one sample event, the same settings) ---------------------


@dataclass
class Sample:
    statements: list[tuple[str, float]]
    commits: int
    stripe_requests: list[str]
    seconds: float


def sample_project(template: dict[str, Any], invoice_id: int, secret: str) -> Sample:
    """One delivery through Django's test client, every statement counted (execute_wrapper),
    every COMMIT and every HTTP request to Stripe counted."""
    import requests
    from django.db import connection
    from django.test import Client

    reset_invoices([invoice_id])
    statements: list[tuple[str, float]] = []
    stripe_requests: list[str] = []
    commits = 0

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append((sql, time.perf_counter() - started))

    original_request = requests.Session.request
    original_commit = connection.commit

    def counting_request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        stripe_requests.append(f"{method.upper()} {urlsplit(str(url)).path}")
        return original_request(self, method, url, *args, **kwargs)

    def counting_commit() -> None:
        nonlocal commits
        commits += 1
        original_commit()

    body = fresh_event(template, "s")
    client = Client()
    requests.Session.request = counting_request  # type: ignore[method-assign, assignment]
    connection.commit = counting_commit  # type: ignore[method-assign]
    try:
        with connection.execute_wrapper(wrapper):
            started = time.perf_counter()
            response = client.post(
                WEBHOOK_PATH, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(body, secret)
            )
            seconds = time.perf_counter() - started
    finally:
        requests.Session.request = original_request  # type: ignore[method-assign]
        del connection.commit
    if response.status_code != 200 or response.json().get("outcome") != "paid":
        print(f"warning: the sample event answered {response.status_code} {response.content[:200]!r}")
    return Sample(statements=statements, commits=commits, stripe_requests=stripe_requests, seconds=seconds)


def profile_project(templates: list[dict[str, Any]], invoice_ids: list[int], secret: str, top: int) -> None:
    """The project handler in process, sequentially, under cProfile."""
    from django.test import Client

    reset_invoices(invoice_ids)
    client = Client()
    bodies = [fresh_event(t, "p") for t in templates]
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for body in bodies:
        client.post(WEBHOOK_PATH, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(body, secret))
    profiler.disable()
    wall = time.perf_counter() - started
    print(
        f"\nprofile: {len(bodies)} events in process, sequential, {wall / len(bodies) * 1000:.1f} ms/event (cProfile)"
    )
    profiler.dump_stats("/tmp/webhooks_bench.prof")
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("cumulative").print_stats(top)
    print(stream.getvalue())
    print("saved to /tmp/webhooks_bench.prof")


def _short(sql: str) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= 150 else sql[:147] + "..."


# --- Main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offices", type=int, default=100, help="billed offices (2 invoices each)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per handler (every invoice once per round)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers per handler")
    parser.add_argument("--profile", action="store_true", help="also profile the project handler in process")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--db-name", default="webhooks_bench")
    parser.add_argument("--database-url", help="use exactly this database (rebuilt: it is dropped first)")
    parser.add_argument("--i-know", action="store_true", help="allow a shared or development database")
    args = parser.parse_args(argv)
    args.reset = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target: Target = resolve_target(args)
    if target.vendor != "postgresql":
        raise SystemExit("bench.webhooks needs PostgreSQL (DATABASE_URL=postgres://…): row locks are what it measures")
    if target.name.startswith("test") and not args.i_know:
        raise SystemExit(f"refusing {target.name!r}: it looks like someone's test database (pass --i-know)")
    from billing.tests.support.localstripe_server import run_localstripe

    secret = f"whsec_{secrets.token_hex(16)}"
    workdir = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
    broker = workdir / "broker"
    broker.mkdir()
    try:
        with run_localstripe() as stripe_url:
            env = _env(database_url=target.url, stripe_url=stripe_url, secret=secret, broker_dir=str(broker))
            os.environ.update(env)
            started = time.perf_counter()
            cloned = prepare_from_template(target)
            django_setup(push_enabled=False)  # seeding: pushes by hand, nothing queued
            from django.core.management import call_command
            from django.db import connection

            call_command("migrate", verbosity=0, interactive=False)
            call_command("createcachetable", verbosity=0)
            with connection.cursor() as cursor:
                for ddl in MINIMAL_DDL:
                    cursor.execute(ddl)
            if not cloned:
                connection.close()
                save_template(target)
            how = "cloned from its migrated template" if cloned else "migrated (template saved)"
            print(f"database {target.name}: {how} in {time.perf_counter() - started:.1f} s", flush=True)
            print(f"seeding {args.offices} offices in localstripe {stripe_url} …", flush=True)
            data = seed(stripe_url=stripe_url, offices=args.offices)
            print(f"seeded {len(data.invoice_ids)} open invoices, paid in localstripe, in {data.seconds:.0f} s")
            connection.close()

            project = Totals("project")
            minimal = Totals("minimal")
            with (
                gunicorn("bench.webhooks:project_app()", env, workers=args.workers, log=workdir / "project.log") as pp,
                gunicorn("bench.webhooks:minimal_app()", env, workers=args.workers, log=workdir / "minimal.log") as mp,
            ):
                warm(pp, secret)
                warm(mp, secret)
                for r in range(args.rounds):
                    for totals, port, tag in ((minimal, mp, "m"), (project, pp, "p")):
                        reset_invoices(data.invoice_ids)
                        bodies = [fresh_event(t, f"{tag}{r}") for t in data.payloads]
                        done = fire(port, bodies, secret, concurrency=args.concurrency)
                        totals.rounds.append(done)
                        print(
                            f"  round {r + 1} {totals.name:8s}: {len(bodies) / done.seconds:7.1f} events/s, "
                            f"p99 {sorted(done.latencies)[int(0.99 * len(done.latencies))] * 1000:6.0f} ms "
                            f"{dict(done.statuses)}",
                            flush=True,
                        )
            queued = sum(1 for p in broker.rglob("*") if p.is_file())
            # Django's connection is reused below; refresh it (the server may have closed it).
            connection.close()
            from django.conf import settings

            settings.STRIPE_PUSH_ENABLED = True  # as the workers: dj-stripe's mirror is a task
            sample = sample_project(data.payloads[0], data.invoice_ids[0], secret)
            report(project, minimal, sample, queued=queued, args=args)
            if args.profile:
                k = min(len(data.payloads), 200)
                profile_project(data.payloads[:k], data.invoice_ids[:k], secret, args.top)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(project: Totals, minimal: Totals, sample: Sample, *, queued: int, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(
        f"\n{args.workers} gunicorn sync workers per handler, {args.concurrency} concurrent clients, "
        f"{args.rounds} rounds × {len(project.rounds[0].latencies)} events, load average {load[0]:.1f}"
    )
    print(f"{'handler':10s} {'events/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}  answers")
    for t in (project, minimal):
        print(
            f"{t.name:10s} {t.rate:9.1f} {t.pct(0.50) * 1000:8.1f} {t.pct(0.95) * 1000:8.1f} "
            f"{t.pct(0.99) * 1000:8.1f} {t.pct(1.0) * 1000:8.1f}  {dict(t.statuses)}"
        )
    print(
        f"ratio project/minimal: events/s {project.rate / minimal.rate:.2f}× (goal ≥ 0.8), "
        f"p50 {project.pct(0.5) / minimal.pct(0.5):.2f}×, p95 {project.pct(0.95) / minimal.pct(0.95):.2f}×, "
        f"p99 {project.pct(0.99) / minimal.pct(0.99):.2f}× (goal ≤ 1.25)"
    )
    print(f"dj-stripe mirror tasks queued (deferred, not run): {queued}")
    selects = sum(1 for s, _ in sample.statements if s.lstrip().upper().startswith("SELECT"))
    print(
        f"\nper event (one sample delivery in process, {sample.seconds * 1000:.1f} ms): "
        f"project {len(sample.statements)} statements ({selects} SELECT) + {sample.commits} COMMITs, "
        f"{len(sample.stripe_requests)} Stripe requests {sample.stripe_requests}; "
        "minimal 4 statements + 1 COMMIT, 0 Stripe requests"
    )
    for n, (sql, seconds) in enumerate(sample.statements, 1):
        print(f"  {n:2d} {seconds * 1000:6.2f} ms  {_short(sql)}")


if __name__ == "__main__":
    sys.exit(main())
