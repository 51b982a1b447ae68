"""A worker process that pushes invoices to Stripe the way the Celery task does, for the
pacing test (billing/tests/stripe/test_pacing_processes.py) and bench/push_rate.py:

    python -m billing.tests.support.push_worker --threads 2 ID [ID …]

It runs `billing.stripe.push.invoice_push` for each id (threads take ids from one queue),
retrying a transient error after a backoff as `invoice_push_task`'s autoretry would (a
shorter one: tests and benchmarks cannot wait minutes), and prints one JSON line with what
it did. Settings come from the environment (DJANGO_SETTINGS_MODULE, DATABASE_URL,
STRIPE_API_BASE, STRIPE_SECRET_KEY, STRIPE_RATE_LIMIT_* …). With PUSH_WORKER_SENDS=<path>,
it also writes there, as JSON, when each HTTP request left this process (after its pacing
slot: stripe-python's requests client is wrapped, beneath the gateway's paced one) — what
the limiter controls, apart from when a busy localstripe gets round to reading it."""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time
from collections import Counter
from typing import Any

RETRIES = 8  # invoice_push_task's max_retries


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most events in any half-open window [t, t + width) (two pointers over sorted times)."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - width:
            start += 1
        best = max(best, end - start + 1)
    return best


def record_sends() -> list[tuple[float, str]]:
    """Wrap stripe-python's requests client (the class the gateway's paced client extends):
    every request's departure time and method, appended to the returned list."""
    import stripe

    sends: list[tuple[float, str]] = []
    original = stripe.RequestsClient.request

    def request(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        sends.append((time.time(), method.upper()))
        return original(self, method, *args, **kwargs)

    stripe.RequestsClient.request = request  # type: ignore[method-assign]
    return sends


def push_all(ids: list[int], *, threads: int) -> dict[str, Any]:
    from django.db import connection

    from billing.models import Invoice, PushState
    from billing.stripe.gateway import GatewayError, Transient
    from billing.stripe.push import invoice_push

    todo: queue.Queue[int] = queue.Queue()
    for invoice_id in ids:
        todo.put(invoice_id)
    outcome: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def run() -> None:
        try:
            while True:
                try:
                    invoice_id = todo.get_nowait()
                except queue.Empty:
                    return
                for attempt in range(RETRIES + 1):
                    try:
                        state = invoice_push(invoice_id=invoice_id).push_state
                    except Transient as exc:
                        with lock:
                            errors[type(exc).__name__] += 1
                        time.sleep(min(0.2 * 2**attempt, 2.0))
                        continue
                    except GatewayError as exc:
                        with lock:
                            errors[type(exc).__name__] += 1
                        state = Invoice.objects.get(pk=invoice_id).push_state
                    if state == PushState.PENDING and attempt < RETRIES:  # claimed elsewhere: later
                        time.sleep(0.2)
                        continue
                    with lock:
                        outcome[str(state)] += 1
                    break
        finally:
            connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {
        "pid": os.getpid(),
        "invoices": len(ids),
        "outcome": dict(outcome),
        "errors": dict(errors),
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m billing.tests.support.push_worker")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("ids", nargs="+", type=int)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    import django

    django.setup()
    sends_path = os.environ.get("PUSH_WORKER_SENDS")
    sends = record_sends() if sends_path else []
    summary = push_all(args.ids, threads=args.threads)
    if sends_path:
        with open(sends_path, "w") as out:
            json.dump(sends, out)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
