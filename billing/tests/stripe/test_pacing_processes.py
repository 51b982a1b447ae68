"""Two worker processes pushing 40 invoices under one shared limit of 20 writes/s (issue 10,
item 4): real processes (billing/tests/support/push_worker.py, the Celery task's retry
rule) against the test database on PostgreSQL, a Redis server of the test's own holding
the buckets, and our localstripe, which records when each request arrived and answers 429
to three of them mid-way (devtools/localstripe/faults.py).

What must hold: in no 1 s window do the workers send more writes (or reads) than the rate,
plus one for a thread descheduled between its slot and its send on this shared box (the
departure times each worker records, PUSH_WORKER_SENDS; localstripe's own arrival times
are printed, not asserted: a starved localstripe reads its queue in bursts); the 429s are
retried; every invoice ends pushed, with exactly one
Stripe invoice each and one customer per office (idempotency keys: nothing created twice,
though the two processes race on each office's customer)."""

from __future__ import annotations

import json
import secrets
import sys
import uuid
from collections import Counter

import pytest
import requests
from django.db import connection

from billing.models import Invoice, PushState
from billing.services import invoice_create_one_off
from billing.stripe import pacing
from billing.tests.support.crash import Child, subprocess_env
from billing.tests.support.factories import OfficeFactory
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.push_worker import max_in_window
from config.tests.outage_support import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

RATE = 20
OFFICES = 20  # two invoices each, split between the two processes
WORKER_TIMEOUT = 180


def test_it_paces_two_processes_under_one_limit_and_pushes_every_invoice_once_through_429s(
    on_postgres, settings, tmp_path
):
    settings.INVOICE_NUMBER_PREFIX = f"R{uuid.uuid4().hex[:6].upper()}"
    offices = [OfficeFactory() for _ in range(OFFICES)]
    ids = [
        invoice_create_one_off(office=office, lines=[{"description": f"Session {n}", "amount_cents": 5000 + n}]).pk
        for office in offices
        for n in range(2)
    ]
    children: list[Child] = []
    with RedisServer.start() as redis_, run_localstripe() as url:
        # Mid-way: after 15 item writes have gone through, the next 3 answer 429.
        rule = {"count": 3, "skip": 15, "method": "POST", "path": "^/v1/invoiceitems$"}
        rule["headers"] = {"Retry-After": "0.5"}
        assert requests.post(f"{url}/_config/faults", json=rule, timeout=5).status_code == 200
        env = subprocess_env(
            str(connection.settings_dict["NAME"]),
            STRIPE_API_BASE=url,
            STRIPE_SECRET_KEY=f"sk_test_{secrets.token_hex(12)}",
            STRIPE_RATE_LIMIT_ENABLED="true",
            STRIPE_RATE_LIMIT_REDIS_URL=redis_.url,
            STRIPE_WRITE_RATE_PER_SECOND=str(RATE),
            STRIPE_READ_RATE_PER_SECOND=str(RATE),
            LOG_LEVEL="WARNING",
        )
        try:
            for k in range(2):
                argv = [sys.executable, "-m", "billing.tests.support.push_worker", "--threads", "3"]
                own = {**env, "PUSH_WORKER_SENDS": str(tmp_path / f"sends-{k}.json")}
                children.append(Child([*argv, *map(str, ids[k::2])], own, tmp_path / f"worker-{k}.log"))
            for child in children:
                assert child.wait(WORKER_TIMEOUT) == 0, child.log()
        finally:
            for child in children:
                child.stop()
        log = requests.get(f"{url}/_config/requests", timeout=5).json()["data"]
        assert requests.get(f"{url}/_config/faults", timeout=5).json() == {"faults": []}, "every 429 was answered"
    summaries = [json.loads(child.log().strip().splitlines()[-1]) for child in children]

    sends = [(t, m) for k in range(2) for t, m in json.loads((tmp_path / f"sends-{k}.json").read_text())]
    sent_writes = [t for t, m in sends if m != "GET"]
    sent_reads = [t for t, m in sends if m == "GET"]
    limit = RATE + pacing.BURST  # the rate, plus one for a thread descheduled after its slot
    assert max_in_window(sent_writes) <= limit, max_in_window(sent_writes)
    assert max_in_window(sent_reads) <= limit, max_in_window(sent_reads)
    writes = [e for e in log if e["method"] != "GET"]
    reads = [e for e in log if e["method"] == "GET"]
    assert len(writes) == len(sent_writes) and len(reads) == len(sent_reads)

    # The 429s were retried with their keys, and each retry went through.
    faulted = [e for e in writes if e["faulted"]]
    assert len(faulted) == 3
    for entry in faulted:
        assert any(
            e["idempotency_key"] == entry["idempotency_key"] and e["status"] == 200 and e["t"] > entry["t"]
            for e in writes
        )

    # Every invoice pushed, once: Stripe executed each key at most once (the rest replays).
    assert Counter(Invoice.objects.filter(pk__in=ids).values_list("push_state", flat=True)) == {
        PushState.PUSHED: len(ids)
    }
    executed = Counter(e["idempotency_key"] for e in writes if e["status"] == 200 and not e["replayed"])
    assert all(n == 1 for n in executed.values()), executed
    created = [e for e in writes if e["path"] == "/v1/invoices" and e["status"] == 200 and not e["replayed"]]
    assert sorted(e["idempotency_key"] for e in created) == sorted(f"invoice:{i}:create" for i in ids)
    customers = [e for e in writes if e["path"] == "/v1/customers" and e["status"] == 200 and not e["replayed"]]
    assert len(customers) == OFFICES
    stripe_ids = list(Invoice.objects.filter(pk__in=ids).values_list("stripe_invoice_id", flat=True))
    assert len(set(stripe_ids)) == len(ids) and None not in stripe_ids

    span = writes[-1]["t"] - writes[0]["t"]
    print(
        f"\n{len(writes)} writes and {len(reads)} reads in {span:.1f} s: {len(writes) / span:.1f} writes/s "
        f"(limit {RATE}); max in 1 s as sent: {max_in_window(sent_writes)} writes, {max_in_window(sent_reads)} reads; "
        f"as localstripe read them: {max_in_window([e['t'] for e in writes])}, "
        f"{max_in_window([e['t'] for e in reads])}; "
        f"workers: {summaries}"
    )
