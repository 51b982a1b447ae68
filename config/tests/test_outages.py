"""Health of dependencies (issue 8): the application with its database or its broker down.

- PostgreSQL stopped: the API and the Stripe webhook answer 503 with the project's JSON
  error (`{"message", "extra"}`, `Retry-After`) within the client's 10 s, never a hang or
  an HTML 500, and answer 200 again once the database is back, without a restart
  (config/outages.py). Proved on a real cluster of the test's own (initdb + pg_ctl) and the
  application as a subprocess (`runserver --nothreading` with persistent connections, so
  the connection that died with the server must be noticed and replaced).
- Broker (Redis) stopped: subscribing and activating a patient still succeed; the Stripe
  push asked for after commit fails to enqueue (logged by the publisher's thread,
  billing/stripe/publisher.py), the invoice stays `push_state=pending`, and
  `enqueue_pending_pushes` queues it once the broker is back; the running application
  reaches the returned broker by itself too.
- Broker frozen (SIGSTOP: it accepts connections and never answers): the subscription
  answers at once, since no request publishes in its own thread.
- In-process (the suite's own database, SQLite or PostgreSQL): what counts as an outage,
  and the 503 for a plain view and for a middleware that hit one.

The subprocess half builds its database once per module (`migrate`, about 45 s) and skips,
saying why, where PostgreSQL's server binaries or redis-server are not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from django.db import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from django.http import HttpRequest, HttpResponse
from django.test import Client

from billing.tests.support.stripe_helpers import sign
from config.outages import MESSAGE, RETRY_AFTER_SECONDS, is_database_outage
from config.tests.outage_support import (
    AppServer,
    PgCluster,
    RedisServer,
    Reply,
    app_env,
    free_port,
    http,
    pg_unavailable_reason,
    shell_json,
)

WEBHOOK_SECRET = "whsec_outage_test_0123456789abcdef"
CLIENT_TIMEOUT = 10.0  # seconds: a request that hangs longer fails the test
FAST = 8.0  # seconds: every answer during an outage comes well within the client timeout

SEED = """
import json
from django.core.management import call_command
call_command("migrate", verbosity=0, interactive=False)
call_command("createcachetable", verbosity=0)
from django.contrib.auth import get_user_model
from knox.models import AuthToken
from billing.tests.support.factories import OfficeFactory, PatientFactory, professional_plan
from offices.models import Role
from offices.services import office_member_grant
User = get_user_model()
operator = User.objects.create_user(username="outage-operator", password="pw-outage-1234", is_staff=True)
staff = User.objects.create_user(username="outage-staff", password="pw-outage-1234")
professional_plan()
offices = [OfficeFactory(name=f"Outage Clinic {n}", timezone="America/Chicago") for n in (1, 2, 3)]
patients = [PatientFactory(office=office) for office in offices]
for office in offices:
    office_member_grant(office=office, user=staff, role=Role.OFFICE_STAFF)
print(json.dumps({
    "operator_token": AuthToken.objects.create(operator)[1],
    "staff_token": AuthToken.objects.create(staff)[1],
    "offices": [office.pk for office in offices],
    "patients": [patient.pk for patient in patients],
}))
"""

INVOICES = """
import json
from billing.models import Invoice
print(json.dumps([
    {"id": i.pk, "status": i.status, "push_state": i.push_state, "total_cents": i.total_cents}
    for i in Invoice.objects.filter(office_id=%d).exclude(status="draft").order_by("pk")
]))
"""

ENQUEUE = """
import json
from datetime import timedelta
from billing.stripe.tasks import enqueue_pending_pushes
print(json.dumps(enqueue_pending_pushes(older_than=timedelta(0))))
"""


# --- In-process: what is an outage, and the 503 --------------------------------------


def _wrapped(driver_error: Exception, django_type: type[Exception] = OperationalError) -> Exception:
    """What Django raises: its own exception class, caused by the driver's."""
    try:
        raise django_type(*driver_error.args) from driver_error
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (_wrapped(psycopg.OperationalError("connection refused")), True),
        (_wrapped(psycopg.InterfaceError("the connection is closed"), InterfaceError), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (_wrapped(sqlite3.OperationalError("database is locked")), True),
        (_wrapped(sqlite3.OperationalError("unable to open database file")), True),
        (_wrapped(sqlite3.OperationalError("no such table: billing_invoice")), False),  # a bug, not an outage
        (ProgrammingError("relation does not exist"), False),
        (IntegrityError("duplicate key"), False),
        (RuntimeError("boom"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_what_counts_as_a_database_outage(exc: Exception, outage: bool) -> None:
    assert is_database_outage(exc) is outage


def assert_database_503(reply: Any) -> dict[str, Any]:
    """A JSON 503 in the project's error shape that names the database; returns the body."""
    if isinstance(reply, Reply):
        status, headers, body = reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.body
    else:  # django.test.Client response
        status, headers, body = reply.status_code, {k.lower(): v for k, v in reply.items()}, reply.content
    assert status == 503, body[:2000]
    assert headers["content-type"].startswith("application/json"), headers
    assert headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert headers["cache-control"] == "no-store"
    data = json.loads(body)
    assert set(data) == {"message", "extra"}
    assert data["message"] == MESSAGE
    assert data["extra"]["dependency"] == "database"
    assert data["extra"]["retry_after"] == RETRY_AFTER_SECONDS
    assert data["extra"]["request_id"] and data["extra"]["request_id"] == headers["x-request-id"]
    return data


def _raise(exc: Exception) -> Callable[..., Any]:
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return raiser


@pytest.mark.django_db
def test_a_view_that_loses_the_database_answers_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook (a plain Django view): its first query fails → 503, no HTML 500."""
    monkeypatch.setattr(
        "billing.stripe.webhooks._first_in_window",
        _raise(_wrapped(psycopg.OperationalError("connection to server failed: Connection refused"))),
    )
    reply = Client().post("/stripe/webhook/", data=b"{}", content_type="application/json")
    assert_database_503(reply)


@pytest.mark.django_db
def test_other_server_errors_stay_500(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("billing.stripe.webhooks._first_in_window", _raise(RuntimeError("a bug")))
    reply = Client(raise_request_exception=False).post("/stripe/webhook/", data=b"{}", content_type="application/json")
    assert reply.status_code == 500
    monkeypatch.setattr(
        "billing.stripe.webhooks._first_in_window",
        _raise(_wrapped(sqlite3.OperationalError("no such table: billing_webhookrejectionwindow"))),
    )
    reply = Client(raise_request_exception=False).post("/stripe/webhook/", data=b"{}", content_type="application/json")
    assert reply.status_code == 500


class DatabaseDownInResponseMiddleware:
    """A middleware that hits the database on the way out (as the session middleware does)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.get_response(request)
        raise _wrapped(psycopg.OperationalError("server closed the connection unexpectedly"))


@pytest.mark.django_db
def test_a_middleware_that_loses_the_database_answers_503(settings: Any) -> None:
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.DatabaseDownInResponseMiddleware"]
    reply = Client(raise_request_exception=False).get("/api/v1/offices/")
    assert_database_503(reply)


# --- Subprocesses: a real PostgreSQL, a real Redis, the application ------------------


@dataclass
class Stack:
    pg: PgCluster
    redis: RedisServer | None
    broker_url: str
    env: dict[str, str]
    app: AppServer
    operator_token: str
    staff_token: str
    offices: list[int]
    patients: list[int]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = pg_unavailable_reason()
    if reason:
        pytest.skip(f"needs a throwaway PostgreSQL cluster: {reason}")
    folder = tmp_path_factory.mktemp("outage-app")
    with PgCluster.create() as pg:
        if shutil.which("redis-server"):
            redis_cm: Any = RedisServer.start()
        else:
            redis_cm = None
        server = redis_cm.__enter__() if redis_cm else None
        try:
            broker_url = server.url if server else f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
            env = app_env(
                DJANGO_SETTINGS_MODULE="config.settings.local",  # the test settings force pushes off
                DJANGO_DEBUG="false",
                DATABASE_URL=pg.url,
                CELERY_BROKER_URL=broker_url,
                STRIPE_PUSH_ENABLED="true",  # the push handler is registered (billing/stripe/wiring.py)
                STRIPE_API_BASE="http://127.0.0.1:9",  # never Stripe; no worker runs anyway
                STRIPE_MAX_NETWORK_RETRIES="0",
                STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
                LOG_LEVEL="WARNING",
                # The queue is counted message by message: no email dispatch requests in it.
                NOTIFICATIONS_DISPATCH_AFTER_COMMIT="false",
            )
            seed = shell_json(env, SEED)
            with AppServer.start(env, Path(folder)) as app:
                yield Stack(pg=pg, redis=server, broker_url=broker_url, env=env, app=app, **seed)
        finally:
            if redis_cm:
                redis_cm.__exit__(None, None, None)


def _event(n: int) -> bytes:
    return json.dumps(
        {
            "id": f"evt_outage_{n}_{time.time_ns()}",
            "object": "event",
            "type": "balance.available",
            "created": int(time.time()),
            "livemode": False,
            "api_version": "2026-08-26.dahlia",
            "data": {"object": {"object": "balance", "customer": "cus_outage"}},
        }
    ).encode()


def webhook(stack: Stack, n: int, *, signed: bool = True) -> Reply:
    body = _event(n)
    header = sign(body, WEBHOOK_SECRET) if signed else "t=1,v1=00"
    return http(
        "POST",
        stack.app.url + "/stripe/webhook/",
        body=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
        timeout=CLIENT_TIMEOUT,
    )


def test_database_down_answers_json_503_fast_and_recovers_without_restart(stack: Stack) -> None:
    app = stack.app
    offices_url = app.url + "/api/v1/offices/"
    before = http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT)
    assert before.status == 200, before.body
    assert before.data["count"] == 3
    assert webhook(stack, 1).status == 200

    stack.pg.stop()
    try:
        replies = {
            # the connection kept from the last request died with the server …
            "api, stale connection": http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT),
            # … and then no new one can be opened
            "api, refused": http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT),
            "api write": http(
                "POST",
                f"{app.url}/api/v1/offices/{stack.offices[1]}/subscription/",
                token=stack.operator_token,
                body=b'{"plan": "professional"}',
                timeout=CLIENT_TIMEOUT,
            ),
            "signed webhook": webhook(stack, 2),
            "unsigned webhook": webhook(stack, 3, signed=False),  # its rejection is audited: a write
        }
    finally:
        stack.pg.start()
    for what, reply in replies.items():
        assert reply.seconds < FAST, (what, reply.seconds)
        try:
            assert_database_503(reply)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}\n{app.log_tail()}") from exc

    # The database is back: the same process answers again.
    assert app.proc.poll() is None
    after = http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT)
    assert after.status == 200, (after.body, app.log_tail())
    assert after.data == before.data
    assert webhook(stack, 4).status == 200
    assert app.proc.poll() is None


def test_database_that_does_not_answer_fails_within_the_connect_timeout(stack: Stack) -> None:
    """A server that accepts the TCP connection but never answers (here: the postmaster
    frozen with SIGSTOP): opening a connection gives up after `connect_timeout` (3 s in
    this test's DATABASE_URL) and the request answers 503 instead of hanging."""
    app = stack.app
    offices_url = app.url + "/api/v1/offices/"
    assert http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT).status == 200
    with psycopg.connect(stack.pg.conninfo("postgres"), autocommit=True) as admin:
        # The application's kept connection goes away, so its next request has to open one.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [stack.pg.database],
        )
    postmaster = int((stack.pg.data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        stale = http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT)
        frozen = http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT)
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert_database_503(stale)
    assert_database_503(frozen)
    assert 2.5 < frozen.seconds < FAST, frozen.seconds  # the connect timeout, not a hang
    after = http("GET", offices_url, token=stack.operator_token, timeout=CLIENT_TIMEOUT)
    assert after.status == 200, (after.body, app.log_tail())


def test_broker_down_subscribe_and_activate_succeed_and_push_is_queued_later(stack: Stack) -> None:
    if stack.redis is None:
        pytest.skip("needs redis-server to start and stop a broker of the test's own")
    app = stack.app
    queue = redis.Redis.from_url(stack.redis.url)
    office, other_office, _ = stack.offices
    stack.redis.stop()
    try:
        subscribed = http(
            "POST",
            f"{app.url}/api/v1/offices/{office}/subscription/",
            token=stack.operator_token,
            body=b'{"plan": "professional"}',
            timeout=CLIENT_TIMEOUT,
        )
        activated = http(
            "POST", f"{app.url}/api/v1/patients/{stack.patients[0]}/activate/", token=stack.staff_token, body=b"{}"
        )
    finally:
        stack.redis.restart()  # same port, empty
    assert subscribed.status == 201, (subscribed.body, app.log_tail())
    assert subscribed.data["status"] == "active"
    assert activated.status == 200, (activated.body, app.log_tail())
    assert activated.data["is_active"] is True
    assert subscribed.seconds < FAST and activated.seconds < FAST, (subscribed.seconds, activated.seconds)

    # The setup fee was finalized; its push could not be enqueued: still pending.
    invoices = shell_json(stack.env, INVOICES % office)
    assert [i["push_state"] for i in invoices] == ["pending"], invoices
    assert invoices[0]["total_cents"] == 50000
    assert queue.llen("celery") == 0

    # The hourly catch-up enqueues it now that the broker is back (a worker would push it).
    assert shell_json(stack.env, ENQUEUE) == len(invoices)
    assert queue.llen("celery") == len(invoices)

    # And the running application reaches the returned broker by itself: the next
    # subscription's push is enqueued at once.
    again = http(
        "POST",
        f"{app.url}/api/v1/offices/{other_office}/subscription/",
        token=stack.operator_token,
        body=b'{"plan": "professional"}',
        timeout=CLIENT_TIMEOUT,
    )
    assert again.status == 201, again.body
    deadline = time.monotonic() + 5
    # Two messages: its setup fee's push and its customer (requested at subscribe, spec §8).
    while queue.llen("celery") < len(invoices) + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue.llen("celery") == len(invoices) + 2, app.log_tail()


def test_broker_that_does_not_answer_does_not_hang_a_subscription(stack: Stack) -> None:
    """Redis frozen with SIGSTOP: TCP still connects, nothing answers (a half-dead server,
    a network partition). The subscription must still answer within the client timeout."""
    if stack.redis is None or stack.redis.proc is None:
        pytest.skip("needs redis-server to start and stop a broker of the test's own")
    app = stack.app
    stack.redis.proc.send_signal(signal.SIGSTOP)
    try:
        try:
            reply = http(
                "POST",
                f"{app.url}/api/v1/offices/{stack.offices[2]}/subscription/",
                token=stack.operator_token,
                body=b'{"plan": "professional"}',
                timeout=CLIENT_TIMEOUT,
            )
        except (TimeoutError, urllib.error.URLError) as exc:
            pytest.fail(f"the subscription hung for more than {CLIENT_TIMEOUT} s with the broker frozen: {exc!r}")
    finally:
        stack.redis.proc.send_signal(signal.SIGCONT)
        # The single-threaded app finishes the stuck request once Redis answers again.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if http("GET", app.url + "/api/v1/offices/", token=stack.operator_token, timeout=5).status == 200:
                    break
            except (TimeoutError, urllib.error.URLError):
                pass
    assert reply.status == 201, reply.body
    assert reply.seconds < FAST, reply.seconds
    print(f"subscription answered in {reply.seconds:.1f} s with the broker frozen")
    # What the frozen broker did not take stays pending, and the hourly sweep enqueues it.
    invoices = shell_json(stack.env, INVOICES % stack.offices[2])
    assert [i["push_state"] for i in invoices] == ["pending"], invoices
    # (Those of the other offices, which no worker pushes in this stack, are enqueued too.)
    assert shell_json(stack.env, ENQUEUE) >= len(invoices)
