"""Push-pacing benchmark (issue 10, item 4): N invoices pushed to localstripe by W worker
processes (T threads each) that share one Redis rate limit, with the write limit set low.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m bench.push_rate --invoices 1000 --workers 2 --threads 3 \\
        --write-rate 50 --redis-url redis://127.0.0.1:6379/13

It never touches the database DATABASE_URL names: it uses its own (`push_rate_bench` on the
same server, migrated on first use and kept; SQLite: /tmp/push_rate_bench.sqlite3), starts a
localstripe of its own, and builds N/2 offices with two one-off invoices each through
`billing.services.invoice_create_one_off` (not measured). Then W processes
(`python -m billing.tests.support.push_worker`, the Celery task's retry rule) push them with
the real gateway and pacing on (`STRIPE_RATE_LIMIT_*`, a fresh account key so the bucket is
new), and localstripe's request log (arrival times, devtools/localstripe/faults.py) gives
the figures (with the time each request left its worker, recorded beside them:
`PUSH_WORKER_SENDS`): achieved write rate ÷ limit (goal ≥ 0.9), the most writes in any 1 s window ÷
limit (goal never above 1.0), the same for reads, 429s, and exactly-once checks. With
`--inject-429 K`, K item writes answer 429 mid-way. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from bench.billing_run import BASE_DIR, prepare_database, resolve_target, setup_django
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.push_worker import max_in_window


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.push_rate", description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=1000, help="invoices to push (two per office; default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=3, help="threads per worker (default 3)")
    parser.add_argument("--write-rate", type=float, default=50.0, help="STRIPE_WRITE_RATE_PER_SECOND (default 50)")
    parser.add_argument("--read-rate", type=float, default=50.0, help="STRIPE_READ_RATE_PER_SECOND (default 50)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the shared limiter's Redis")
    parser.add_argument("--inject-429", type=int, default=0, help="this many item writes answer 429 mid-way")
    parser.add_argument("--db-name", default="push_rate_bench", help="benchmark database name")
    parser.add_argument("--database-url", help="use exactly this database (see --i-know)")
    parser.add_argument("--i-know", action="store_true", help="allow a shared/development database")
    parser.add_argument("--reset", action="store_true", help="drop and recreate the benchmark database first")
    args = parser.parse_args(argv)
    if args.invoices < 2 or args.workers < 1 or args.threads < 1:
        parser.error("--invoices ≥ 2, --workers ≥ 1 and --threads ≥ 1")
    return args


def build_invoices(count: int) -> list[int]:
    """count/2 offices, two pending one-off invoices each (through the services)."""
    from billing.services import invoice_create_one_off
    from billing.tests.support.factories import OfficeFactory

    ids: list[int] = []
    for _ in range(count // 2):
        office = OfficeFactory()
        for n in range(2):
            line = {"description": f"Onboarding session {n + 1}", "amount_cents": 12_000 + n}
            ids.append(invoice_create_one_off(office=office, lines=[line]).pk)
    return ids


def per_second(times: list[float]) -> list[int]:
    """Requests in each whole second from the first one, the last (partial) second left out."""
    if not times:
        return []
    start = min(times)
    buckets = Counter(int(t - start) for t in times)
    return [buckets.get(i, 0) for i in range(max(buckets))]


def report(
    *,
    args: argparse.Namespace,
    log: list[dict[str, Any]],
    ids: list[int],
    wall: float,
    workers: list[Any],
    sends: list[tuple[float, str]],
) -> None:
    from billing.models import Invoice, PushState

    writes = [e for e in log if e["method"] != "GET"]
    reads = [e for e in log if e["method"] == "GET"]
    wt = sorted(e["t"] for e in writes)
    rt = sorted(e["t"] for e in reads)
    span = wt[-1] - wt[0] if len(wt) > 1 else float("nan")
    rate = (len(wt) - 1) / span if len(wt) > 1 else float("nan")
    max_w, max_r = max_in_window(wt), max_in_window(rt)
    seconds = per_second(wt)
    states = Counter(Invoice.objects.filter(pk__in=ids).values_list("push_state", flat=True))
    executed = Counter(e["idempotency_key"] for e in writes if e["status"] == 200 and not e["replayed"])
    created = [e for e in writes if e["path"] == "/v1/invoices" and e["status"] == 200 and not e["replayed"]]
    statuses = Counter(e["status"] for e in log)

    print()
    print(f"invoices: {len(ids):,} ({len(ids) // 2:,} offices); {args.workers} processes × {args.threads} threads")
    print(f"limit: {args.write_rate:g} writes/s, {args.read_rate:g} reads/s, shared in Redis ({args.redis_url})")
    print(f"wall (workers started → all done): {wall:.1f} s")
    print(f"requests: {len(writes):,} writes, {len(reads):,} reads; answers {dict(sorted(statuses.items()))}")
    print(
        f"achieved write rate: {rate:.2f}/s over {span:.1f} s = {rate / args.write_rate:.3f} of the limit (goal ≥ 0.9)"
    )
    print(f"max writes in any 1 s window: {max_w} = {max_w / args.write_rate:.3f} of the limit (goal ≤ 1.0)")
    if sends:
        sent_w = [t for t, m in sends if m != "GET"]
        sent_r = [t for t, m in sends if m == "GET"]
        print(
            f"  as sent by the workers (after their slot): {len(sent_w):,} writes, max in any 1 s window "
            f"{max_in_window(sent_w)} = {max_in_window(sent_w) / args.write_rate:.3f}; reads {max_in_window(sent_r)} "
            f"= {max_in_window(sent_r) / args.read_rate:.3f}"
        )
        # Arrival order at localstripe lags departure by its queue: how far behind it ran.
        lag = sorted(a - s for a, s in zip(wt, sorted(sent_w), strict=False))
        if lag:
            print(
                f"  localstripe read them {statistics.median(lag) * 1000:.0f} ms after they left (median), "
                f"p99 {lag[int(len(lag) * 0.99) - 1] * 1000:.0f} ms"
            )
    if rt:
        rspan = rt[-1] - rt[0]
        rrate = (len(rt) - 1) / rspan if rspan > 0 else float("nan")
        print(f"reads: {rrate:.2f}/s; max in any 1 s window: {max_r} = {max_r / args.read_rate:.3f} of the limit")
    if seconds:
        inner = seconds[1:-1] or seconds
        print(
            f"writes per whole second: min {min(inner)}, median {statistics.median(inner):g}, max {max(seconds)} "
            f"(first second {seconds[0]}, {len(seconds)} seconds)"
        )
    print(f"push states: {dict(states)}")
    print(
        f"Stripe invoices created: {len(created):,} for {len(ids):,} invoices; keys executed more than once: "
        f"{sum(1 for n in executed.values() if n > 1)}"
    )
    for worker in workers:
        print(f"worker: {worker}")
    if states.get(PushState.PUSHED, 0) != len(ids):
        print("warning: not every invoice was pushed")


def run_workers(
    *, args: argparse.Namespace, ids: list[int], env: dict[str, str], folder: Path
) -> tuple[float, list[Any], list[tuple[float, str]]]:
    procs = []
    started = time.monotonic()
    for k in range(args.workers):
        argv = [sys.executable, "-m", "billing.tests.support.push_worker", "--threads", str(args.threads)]
        argv += [str(i) for i in ids[k :: args.workers]]
        log = (folder / f"worker-{k}.log").open("wb")
        own = {**env, "PUSH_WORKER_SENDS": str(folder / f"sends-{k}.json")}
        procs.append((subprocess.Popen(argv, cwd=BASE_DIR, env=own, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        proc.wait()
        log.close()
    wall = time.monotonic() - started
    summaries: list[Any] = []
    for k, (proc, _) in enumerate(procs):
        lines = (folder / f"worker-{k}.log").read_text(errors="replace").strip().splitlines()
        try:
            summaries.append(json.loads(lines[-1]))
        except (IndexError, ValueError):
            summaries.append({"exit": proc.returncode, "tail": lines[-5:]})
    sends: list[tuple[float, str]] = []
    for k in range(args.workers):
        path = folder / f"sends-{k}.json"
        if path.exists():
            sends.extend((float(t), str(m)) for t, m in json.loads(path.read_text()))
    return wall, summaries, sends


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = resolve_target(args)
    prepare_database(target, reset=args.reset)
    setup_django(target)
    logging.getLogger("billing.push").setLevel(logging.WARNING)  # "push pending (no gateway installed)"
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    with run_localstripe(extra=("--in-memory",)) as url, tempfile.TemporaryDirectory(prefix="push-rate-") as tmp:
        from django.conf import settings

        settings.STRIPE_API_BASE = url
        started = time.monotonic()
        ids = build_invoices(args.invoices)
        print(f"built {len(ids):,} pending invoices in {time.monotonic() - started:.1f} s", flush=True)
        if args.inject_429:
            rule = {"count": args.inject_429, "skip": len(ids) // 2, "method": "POST", "path": "^/v1/invoiceitems$"}
            requests.post(f"{url}/_config/faults", json=rule, timeout=5).raise_for_status()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "CELERY_BROKER_URL"))},
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": target.url,
            "STRIPE_API_BASE": url,
            "STRIPE_SECRET_KEY": f"sk_test_bench{secrets.token_hex(12)}",  # a fresh bucket
            "STRIPE_RATE_LIMIT_ENABLED": "true",
            "STRIPE_RATE_LIMIT_REDIS_URL": args.redis_url,
            "STRIPE_WRITE_RATE_PER_SECOND": str(args.write_rate),
            "STRIPE_READ_RATE_PER_SECOND": str(args.read_rate),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        print(f"worker logs: {tmp}", flush=True)
        print(f"pushing with {args.workers} workers × {args.threads} threads …", flush=True)
        wall, workers, sends = run_workers(args=args, ids=ids, env=env, folder=Path(tmp))
        log = requests.get(f"{url}/_config/requests", timeout=30).json()["data"]
    report(args=args, log=log, ids=ids, wall=wall, workers=workers, sends=sends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
