"""`/health/live` and `/health/ready` (issue 12, item 6; docs/compliance.md, contingency).

Real parts: the suite's database, Redis on the shared server's database 7 for the green
Redis cases, redis-servers of the test's own (outage_support) stopped for the outages, a
socket that accepts and never answers for a hung broker, the embedded filesystem broker
in a folder of the test's. The database outage runs the application under gunicorn
against a PostgreSQL port nobody listens on."""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta

import pytest
from django.test import Client

from audit.models import AuditEvent
from audit.services import audit_record, audit_seal
from billing.tests.support.factories import at
from ops.tests.conftest import redis_cache, shared_redis_or_skip

pytestmark = pytest.mark.django_db

READY_CHECKS = {"database", "cache", "broker", "billing_tick", "audit_sealer"}


def ready(client: Client, **extra: str) -> tuple[int, dict]:
    response = client.get("/health/ready", **extra)
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    return response.status_code, json.loads(response.content)


# --- Live -------------------------------------------------------------------------------


def test_it_answers_live_with_200_and_touches_no_dependency(client: Client, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        response = client.get("/health/live")
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok"}
    assert "no-store" in response["Cache-Control"]
    assert "Set-Cookie" not in response
    assert client.head("/health/live").status_code == 200
    assert client.post("/health/live").status_code == 405


# --- Ready: green -----------------------------------------------------------------------


def test_it_is_ready_when_database_cache_broker_tick_and_sealer_are_green(client, broker, fresh_tick) -> None:
    status, body = ready(client)
    assert status == 200, body
    assert body["status"] == "ok" and body["failed"] == []
    assert set(body["checks"]) == READY_CHECKS
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["broker"]["transport"] == "filesystem"
    assert body["checks"]["billing_tick"]["threshold_seconds"] == 120 * 60
    assert body["checks"]["audit_sealer"]["unsealed"] == 0


def test_it_is_ready_with_redis_as_cache_and_broker(client, broker, fresh_tick, settings) -> None:
    url = shared_redis_or_skip()
    broker(url)
    with redis_cache(settings, url):
        status, body = ready(client)
    assert status == 200, body
    assert body["checks"]["cache"]["ok"] and body["checks"]["broker"]["ok"]
    assert "transport" not in body["checks"]["broker"]  # nothing about the broker beyond up or down


# --- Ready: red, one dependency at a time -------------------------------------------------


def test_it_is_not_ready_when_the_broker_is_down_and_ready_again_when_it_returns(
    client, broker, fresh_tick, redis_server
) -> None:
    broker(redis_server.url)
    assert ready(client)[0] == 200
    redis_server.stop()
    status, body = ready(client)
    assert status == 503
    assert body["status"] == "unavailable" and body["failed"] == ["broker"]
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["broker"]["error"] == "OperationalError"
    assert str(redis_server.port) not in json.dumps(body)  # no address, no URL, no message
    redis_server.restart()
    assert ready(client)[0] == 200


def test_it_is_not_ready_within_its_timeout_when_the_broker_accepts_and_never_answers(
    client, broker, fresh_tick, settings
) -> None:
    settings.HEALTH_CHECK_TIMEOUT_SECONDS = 1.0
    with socket.socket() as hung:  # listens (the kernel accepts) but never reads or answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        broker(f"redis://127.0.0.1:{hung.getsockname()[1]}/0")
        started = time.monotonic()
        status, body = ready(client)
        took = time.monotonic() - started
    assert status == 503 and body["failed"] == ["broker"]
    assert took < 5, took


def test_it_counts_the_embedded_broker_up_only_when_its_folder_is_writable(
    client, broker, fresh_tick, tmp_path
) -> None:
    broker(folder=tmp_path / "missing")
    status, body = ready(client)
    assert status == 503 and body["failed"] == ["broker"]
    assert body["checks"]["broker"]["error"] == "folder not writable: in, out"
    (tmp_path / "missing").mkdir()
    assert ready(client)[0] == 200
    assert not list((tmp_path / "missing").iterdir())  # the probe file is gone, and never a .msg


def test_it_is_not_ready_when_the_cache_is_down(client, broker, fresh_tick, settings, redis_server) -> None:
    with redis_cache(settings, redis_server.url):
        assert ready(client)[0] == 200
        redis_server.stop()
        status, body = ready(client)
    assert status == 503 and body["failed"] == ["cache"]
    assert body["checks"]["cache"]["error"] == "ConnectionError"


def test_it_is_not_ready_when_the_last_tick_is_older_than_two_hours(client, broker, fresh_tick) -> None:
    fresh_tick(timedelta(minutes=119))
    assert ready(client)[0] == 200
    fresh_tick(timedelta(hours=3))
    status, body = ready(client)
    assert status == 503 and body["failed"] == ["billing_tick"]
    tick = body["checks"]["billing_tick"]
    assert tick["ok"] is False and 3 * 3600 <= tick["age_seconds"] < 3 * 3600 + 60
    assert "has not ticked successfully for 3 h" in tick["message"]


def test_it_takes_the_tick_threshold_from_the_settings(client, broker, fresh_tick, settings) -> None:
    settings.HEALTH_TICK_MAX_AGE_MINUTES = 30
    fresh_tick(timedelta(minutes=31))
    status, body = ready(client)
    assert status == 503 and body["failed"] == ["billing_tick"]
    assert body["checks"]["billing_tick"]["threshold_seconds"] == 30 * 60


def test_it_is_not_ready_before_any_tick_has_succeeded(client, broker) -> None:
    status, body = ready(client)
    assert status == 503 and body["failed"] == ["billing_tick"]
    assert body["checks"]["billing_tick"]["last_success_at"] is None
    assert "No successful billing-run tick recorded yet" in body["checks"]["billing_tick"]["message"]


def test_it_is_not_ready_when_an_audit_entry_waits_too_long_for_its_seal(client, broker, fresh_tick) -> None:
    # In this test's transaction the after-commit sealer never runs: the entry stays unsealed.
    from django.utils import timezone

    with at(timezone.now() - timedelta(minutes=11)):
        audit_record(action="test.entry", data={"n": 1})
    assert AuditEvent.objects.filter(seq__isnull=True).count() == 1
    status, body = ready(client)
    assert status == 503 and body["failed"] == ["audit_sealer"]
    sealer = body["checks"]["audit_sealer"]
    assert sealer["unsealed"] == 1 and sealer["oldest_age_seconds"] >= 11 * 60
    assert "the audit sealer has stopped" in sealer["message"]
    audit_seal()
    assert ready(client)[0] == 200


def test_it_allows_a_young_unsealed_entry(client, broker, fresh_tick) -> None:
    audit_record(action="test.entry", data={"n": 1})
    status, body = ready(client)
    assert status == 200, body
    assert body["checks"]["audit_sealer"]["unsealed"] == 1
