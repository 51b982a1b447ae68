"""Pacing of Stripe requests (issue 10, item 4; billing/stripe/pacing.py, docs/stripe.md
"Pacing"): every request takes a slot from a shared GCRA bucket (a Redis server of the
test's own, started and stopped here), reads and writes apart, per account; a slot too far
away is a transient error with nothing sent; Redis down fails open to the process' own
limiter. And the gateway's 429 handling, against our localstripe with injected 429s
(devtools/localstripe/faults.py): Retry-After, else exponential backoff with jitter, the
shared bucket held, `Stripe-Should-Retry: false` never retried, no multiplication with
stripe-python's own retries, and a push left pending for the task's retry."""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
from prometheus_client import REGISTRY

from billing.models import Invoice, PushState
from billing.services import invoice_create_one_off
from billing.stripe import pacing
from billing.stripe.gateway import Gateway, Permanent, RateLimitWait, Transient, client, rate_limited_delay
from billing.stripe.push import invoice_push
from billing.tests.support.factories import OfficeFactory
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.push_worker import max_in_window
from config.tests.outage_support import RedisServer


def fail_open_count() -> float:
    return REGISTRY.get_sample_value("billing_stripe_pacing_fail_open_total") or 0.0


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer.start() as server:
        yield server


@pytest.fixture
def paced(settings, redis_server):
    """Pacing on, through the test's own Redis, for an account of the test's own."""
    if redis_server.proc is None:
        redis_server.restart()
    settings.STRIPE_RATE_LIMIT_ENABLED = True
    settings.STRIPE_RATE_LIMIT_REDIS_URL = redis_server.url
    settings.STRIPE_SECRET_KEY = f"sk_test_{secrets.token_hex(12)}"
    settings.STRIPE_WRITE_RATE_PER_SECOND = 20
    settings.STRIPE_READ_RATE_PER_SECOND = 20
    settings.STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS = 10
    pacing.reset_for_tests()
    yield settings
    pacing.reset_for_tests()


def granted_times(kind: str, *, threads: int, each: int) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(each):
            pacing.acquire(kind)
            with lock:
                times.append(time.monotonic())

    workers = [threading.Thread(target=take) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sorted(times)


# --- the limiter ---------------------------------------------------------------------------


def test_it_spaces_writes_from_several_threads_sharing_the_redis_bucket(paced):
    assert isinstance(pacing.limiter(), pacing.RedisLimiter)
    times = granted_times(pacing.WRITE, threads=3, each=8)
    assert len(times) == 24
    assert max_in_window(times) <= 20 + pacing.BURST - 1 + 1  # the rate, plus the slot at the window's edge
    assert times[-1] - times[0] >= 23 / 20 - 0.05  # 24 slots, 50 ms apart
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.05 - 0.02, gaps  # scheduling jitter aside, never two at once


def test_it_keeps_reads_writes_and_accounts_apart(paced):
    paced.STRIPE_WRITE_RATE_PER_SECOND = 2
    assert pacing.acquire(pacing.WRITE) == 0
    assert pacing.acquire(pacing.READ) == 0  # another budget
    first_key = paced.STRIPE_SECRET_KEY
    paced.STRIPE_SECRET_KEY = f"sk_live_{secrets.token_hex(12)}"
    assert pacing.acquire(pacing.WRITE) == 0  # another account and mode
    assert pacing.account_scope(paced.STRIPE_SECRET_KEY).startswith("live:")
    assert first_key not in pacing.budget(pacing.WRITE).bucket  # a hash, never the key
    paced.STRIPE_SECRET_KEY = first_key
    assert pacing.acquire(pacing.WRITE) == pytest.approx(0.5, abs=0.1)  # this account's next write slot


def test_it_refuses_a_slot_beyond_the_longest_wait_and_reserves_nothing(paced):
    paced.STRIPE_WRITE_RATE_PER_SECOND = 1
    paced.STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS = 0.3
    pacing.acquire(pacing.WRITE)
    started = time.monotonic()
    with pytest.raises(pacing.SlotUnavailable):
        pacing.acquire(pacing.WRITE)
    assert time.monotonic() - started < 0.2  # refused at once, not after waiting
    time.sleep(1.0)
    assert pacing.acquire(pacing.WRITE) < 0.05  # the refusal took no slot


def test_it_holds_a_bucket_for_everyone(paced):
    pacing.hold(pacing.WRITE, 0.5)
    assert pacing.acquire(pacing.WRITE) == pytest.approx(0.5, abs=0.1)
    assert pacing.acquire(pacing.READ) == 0


def test_it_paces_in_process_without_redis(paced):
    paced.STRIPE_RATE_LIMIT_REDIS_URL = ""
    assert pacing.limiter() is pacing._local
    times = granted_times(pacing.WRITE, threads=2, each=6)
    assert times[-1] - times[0] >= 11 / 20 - 0.05
    assert max_in_window(times) <= 21


def test_it_is_off_when_disabled(paced):
    paced.STRIPE_RATE_LIMIT_ENABLED = False
    paced.STRIPE_WRITE_RATE_PER_SECOND = 0.1
    assert [pacing.acquire(pacing.WRITE) for _ in range(5)] == [0.0] * 5


def test_it_fails_open_to_the_process_limiter_while_redis_is_down(paced, redis_server, monkeypatch, caplog):
    monkeypatch.setattr(pacing, "FAIL_OPEN_COOL_OFF", 0.3)
    paced.STRIPE_WRITE_RATE_PER_SECOND = 10
    pacing.acquire(pacing.WRITE)
    before = fail_open_count()
    redis_server.stop()
    try:
        caplog.set_level(logging.WARNING, logger="billing.stripe.pacing")
        started = time.monotonic()
        waits = [pacing.acquire(pacing.WRITE) for _ in range(4)]
        took = time.monotonic() - started
        assert took < 2.0, "Redis down must not stall Stripe calls"
        assert sum(waits) >= 0.25, "still paced, by this process' own limiter"
        assert fail_open_count() - before == 4
        warnings = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once per outage, not once per request
    finally:
        redis_server.restart()
    time.sleep(0.35)  # the cool-off: Redis is tried again
    pacing.acquire(pacing.WRITE)
    assert fail_open_count() - before == 4
    assert any("answers again" in r.getMessage() for r in caplog.records)


# --- 429s through the gateway, against localstripe -------------------------------------------


@pytest.fixture(scope="module")
def stripe_url():
    with run_localstripe() as url:
        yield url


@pytest.fixture
def stripe_log(stripe_url):
    requests.delete(f"{stripe_url}/_config/faults", timeout=5)
    requests.delete(f"{stripe_url}/_config/requests", timeout=5)

    def read() -> list[dict]:
        return requests.get(f"{stripe_url}/_config/requests", timeout=5).json()["data"]

    yield read
    requests.delete(f"{stripe_url}/_config/faults", timeout=5)


def inject(url: str, **rule) -> None:
    assert requests.post(f"{url}/_config/faults", json=rule, timeout=5).status_code == 200


@pytest.fixture
def gateway(paced, stripe_url, stripe_log):
    paced.STRIPE_API_BASE = stripe_url
    paced.STRIPE_MAX_NETWORK_RETRIES = 2
    paced.STRIPE_RATE_LIMITED_RETRIES = 3
    paced.INVOICE_NUMBER_PREFIX = f"P{uuid.uuid4().hex[:6].upper()}"
    return Gateway(client(api_base=stripe_url))


db = pytest.mark.django_db(transaction=True)


@db
def test_it_retries_a_429_after_retry_after_with_the_same_key(gateway, stripe_url, stripe_log):
    office = OfficeFactory()
    inject(stripe_url, count=2, method="POST", path="^/v1/customers$", headers={"Retry-After": "0.4"})
    customer = gateway.customer_create(office=office, key=f"office:{office.pk}:customer")
    log = [e for e in stripe_log() if e["method"] == "POST"]
    assert [(e["status"], e["idempotency_key"]) for e in log] == [(429, f"office:{office.pk}:customer")] * 2 + [
        (200, f"office:{office.pk}:customer")
    ]
    assert all(b["t"] - a["t"] >= 0.38 for a, b in itertools.pairwise(log))
    assert customer["id"].startswith("cus_")


@db
def test_it_backs_off_exponentially_with_jitter_without_retry_after(gateway, stripe_url, stripe_log):
    office = OfficeFactory()
    inject(stripe_url, count=2, method="POST", path="^/v1/customers$")
    gateway.customer_create(office=office, key=f"office:{office.pk}:customer")
    t = [e["t"] for e in stripe_log() if e["method"] == "POST"]
    assert len(t) == 3
    assert 0.24 <= t[1] - t[0] <= 0.5 + 0.15  # 0.5 s, jittered to half-to-all
    assert 0.49 <= t[2] - t[1] <= 1.0 + 0.15  # doubled


@db
def test_it_does_not_retry_when_stripe_says_it_should_not(gateway, stripe_url, stripe_log):
    office = OfficeFactory()
    inject(stripe_url, count=5, method="POST", path="^/v1/customers$", headers={"Stripe-Should-Retry": "false"})
    with pytest.raises(Permanent):
        gateway.customer_create(office=office, key=f"office:{office.pk}:customer")
    assert len(stripe_log()) == 1
    # The same on a 5xx (stripe-python honours the header; we map it to a non-retried failure).
    requests.delete(f"{stripe_url}/_config/faults", timeout=5)
    inject(stripe_url, count=5, status=500, method="POST", headers={"Stripe-Should-Retry": "false"})
    with pytest.raises(Permanent):
        gateway.customer_create(office=office, key=f"office:{office.pk}:customer")
    assert len(stripe_log()) == 2


@db
def test_it_gives_up_after_its_retries_as_transient_without_stripe_python_multiplying_them(
    gateway, paced, stripe_url, stripe_log
):
    paced.STRIPE_RATE_LIMITED_RETRIES = 2
    office = OfficeFactory()
    # `Stripe-Should-Retry: true` would make stripe-python retry a 429 too (2 more per call).
    inject(
        stripe_url,
        count=20,
        method="POST",
        path="^/v1/customers$",
        headers={"Stripe-Should-Retry": "true", "Retry-After": "0.05"},
    )
    with pytest.raises(Transient) as caught:
        gateway.customer_create(office=office, key=f"office:{office.pk}:customer")
    assert not isinstance(caught.value, Permanent)
    assert len(stripe_log()) == 3  # the first attempt and our 2 retries, not 3 × 3


@db
def test_it_holds_the_shared_bucket_after_a_429_so_other_workers_slow_down(gateway, stripe_url, stripe_log):
    office, other = OfficeFactory(), OfficeFactory()
    inject(stripe_url, count=1, method="POST", path="^/v1/customers$", headers={"Retry-After": "0.6"})
    first = threading.Thread(target=gateway.customer_create, kwargs={"office": office, "key": "pace-hold-1"})
    first.start()
    deadline = time.monotonic() + 5
    while not stripe_log() and time.monotonic() < deadline:
        time.sleep(0.02)
    Gateway(client(api_base=stripe_url)).customer_create(office=other, key="pace-hold-2")
    first.join()
    log = stripe_log()
    refused = next(e for e in log if e["status"] == 429)
    later = next(e for e in log if e["idempotency_key"] == "pace-hold-2")
    assert later["t"] - refused["t"] >= 0.55, "another worker's write waited for the held bucket"


@db
def test_it_sends_nothing_when_no_slot_comes_in_time(gateway, paced, stripe_log):
    paced.STRIPE_WRITE_RATE_PER_SECOND = 0.5
    paced.STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS = 0.2
    office = OfficeFactory()
    gateway.customer_create(office=office, key=f"office:{office.pk}:customer")
    with pytest.raises(RateLimitWait) as caught:
        gateway.customer_create(office=office, key=f"office:{office.pk}:customer:again")
    assert isinstance(caught.value, Transient)
    assert len(stripe_log()) == 1


@db
def test_it_leaves_a_rate_limited_push_pending_for_the_tasks_retry_and_completes_it_once(
    gateway, paced, stripe_url, stripe_log
):
    paced.STRIPE_RATE_LIMITED_RETRIES = 1
    office = OfficeFactory()
    invoice = invoice_create_one_off(office=office, lines=[{"description": "Onboarding session", "amount_cents": 9900}])
    inject(stripe_url, count=2, method="POST", path="^/v1/invoices$", headers={"Retry-After": "0.1"})
    with pytest.raises(Transient):
        invoice_push(invoice_id=invoice.pk, gateway=gateway)
    assert Invoice.objects.get(pk=invoice.pk).push_state == PushState.PENDING  # the task retries it
    pushed = invoice_push(invoice_id=invoice.pk, gateway=gateway)
    assert pushed.push_state == PushState.PUSHED
    created = [e for e in stripe_log() if e["path"] == "/v1/invoices" and e["method"] == "POST"]
    assert [e["status"] for e in created] == [429, 429, 200]
    assert len({e["idempotency_key"] for e in created}) == 1
    office.refresh_from_db()
    remote = list(gateway.invoices_list(params={"customer": office.payment_provider_customer_id, "limit": 10}))
    assert [r["id"] for r in remote] == [pushed.stripe_invoice_id]


def test_it_waits_as_retry_after_says_or_backs_off():
    assert rate_limited_delay({"Retry-After": "2"}, 1) == 2.0
    assert rate_limited_delay({"retry-after": "0.25"}, 5) == 0.25
    assert rate_limited_delay({"Retry-After": "3600"}, 1) == 60.0  # capped; held on the bucket, not slept
    in_two = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    assert 0.5 < rate_limited_delay({"Retry-After": in_two}, 1) <= 2.0
    for attempt, (low, high) in {1: (0.25, 0.5), 2: (0.5, 1.0), 3: (1.0, 2.0), 6: (4.0, 8.0), 9: (4.0, 8.0)}.items():
        assert all(low <= rate_limited_delay({}, attempt) <= high for _ in range(50))
    assert 0.25 <= rate_limited_delay({"Retry-After": "soon"}, 1) <= 0.5
