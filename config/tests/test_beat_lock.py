"""One beat only (docs/deploy.md; HIPAA 164.308(a)(7) contingency): two real `celery beat`
processes on the test database and a Redis broker of the test's own; exactly one holds the
advisory lock and sends tasks, the other stands by; after `kill -9` of the holder the
stand-by takes over within the retry interval.

Who sent a task is read from the messages themselves: Celery stamps each with its
producer's `origin` (`gen<pid>@<host>`)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from billing.tests.support import crash
from config.beat_lock import APPLICATION_NAME, LOCK_KEY

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

PROBE_QUEUE = "beat-lock-probe"  # a queue of its own: no worker ever reads it
RETRY_SECONDS = 1.0
TAKEOVER_TIMEOUT = 10.0  # seconds from the holder's kill to the stand-by's first task
CELERY = str(Path(sys.executable).parent / "celery")


@pytest.fixture
def broker() -> Iterator[str]:
    with crash.run_redis() as url:
        yield url


@pytest.fixture
def children(on_postgres: None) -> Iterator[list[crash.Child]]:
    started: list[crash.Child] = []
    yield started
    for child in started:  # before the database flush, which would wait on their sessions
        child.stop()


def start_beat(name: str, *, broker: str, tmp_path: Path, children: list[crash.Child]) -> crash.Child:
    env = crash.subprocess_env(
        str(connection.settings_dict["NAME"]),
        CELERY_BROKER_URL=broker,
        BEAT_LOCK_RETRY_SECONDS=str(RETRY_SECONDS),
    )
    argv = [CELERY, "-A", "config", "beat", "--loglevel=INFO", "--max-interval=1", "-s", str(tmp_path / name)]
    child = crash.Child(argv, env, tmp_path / f"{name}.log")
    children.append(child)
    return child


def senders(client: redis.Redis) -> list[int]:
    """The pid of the process that sent each probe message, oldest first."""
    pids = []
    for raw in reversed(client.lrange(PROBE_QUEUE, 0, -1)):  # LPUSH: newest first
        origin = json.loads(raw)["headers"]["origin"]  # gen<pid>@<host>
        pids.append(int(origin.split("@")[0].removeprefix("gen")))
    return pids


def lock_holders() -> list[str]:
    """application_name of every session holding our advisory lock in this database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
            [LOCK_KEY],
        )
        return [row[0] for row in cursor.fetchall()]


def test_it_lets_one_beat_schedule_and_hands_over_when_it_is_killed(
    broker: str, tmp_path: Path, children: list[crash.Child]
) -> None:
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="beat lock probe", task="config.tests.beat_lock_probe", interval=every_second, queue=PROBE_QUEUE
    )
    client = redis.Redis.from_url(broker)

    first = start_beat("first", broker=broker, tmp_path=tmp_path, children=children)
    crash.wait_until(lambda: "beat lock acquired" in first.log(), timeout=30, what="the first beat's lock", child=first)
    second = start_beat("second", broker=broker, tmp_path=tmp_path, children=children)
    crash.wait_until(
        lambda: "standing by" in second.log(), timeout=30, what="the second beat standing by", child=second
    )

    crash.wait_until(lambda: len(senders(client)) >= 4, timeout=15, what="four probes", child=first)
    assert set(senders(client)) == {first.pid}, Counter(senders(client))
    assert lock_holders() == [f"{APPLICATION_NAME}:{first.pid}"]
    assert "Sending due task" not in second.log()

    first.kill9()
    killed_at = time.monotonic()
    crash.wait_until(
        lambda: second.pid in senders(client), timeout=TAKEOVER_TIMEOUT, what="the stand-by's first probe", child=second
    )
    takeover = time.monotonic() - killed_at
    assert "beat lock acquired" in second.log()
    assert lock_holders() == [f"{APPLICATION_NAME}:{second.pid}"]
    # Never interleaved: the holder's probes, then only the stand-by's.
    pids = senders(client)
    handover = pids.index(second.pid)
    assert set(pids[:handover]) == {first.pid} and set(pids[handover:]) == {second.pid}, pids
    assert takeover < TAKEOVER_TIMEOUT
    print(f"takeover after kill -9: {takeover:.1f} s")

    # A clean stop (SIGTERM, as systemd sends) releases the lock too.
    os.kill(second.pid, signal.SIGTERM)
    assert second.wait(timeout=15) == 0, second.log()
    assert lock_holders() == []


def test_it_stands_by_while_another_session_holds_the_lock(
    broker: str, tmp_path: Path, children: list[crash.Child]
) -> None:
    """A beat that finds the lock taken installs nothing (no PeriodicTask rows written)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
    try:
        beat = start_beat("standby", broker=broker, tmp_path=tmp_path, children=children)
        crash.wait_until(lambda: "standing by" in beat.log(), timeout=30, what="standing by", child=beat)
        time.sleep(2 * RETRY_SECONDS)
        assert PeriodicTask.objects.count() == 0
        assert "beat lock acquired" not in beat.log()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    crash.wait_until(lambda: "beat lock acquired" in beat.log(), timeout=10, what="the lock after release", child=beat)
    crash.wait_until(
        lambda: PeriodicTask.objects.filter(name="audit-seal").exists(), timeout=10, what="the settings' schedule"
    )


def test_it_stops_scheduling_when_its_lock_session_ends_and_takes_the_lock_again(
    broker: str, tmp_path: Path, children: list[crash.Child]
) -> None:
    """The holder's lock session is ended from outside (a database restart or a network cut
    looks the same to it): it says so, stops, and retries; alone, it holds the lock again."""
    beat = start_beat("holder", broker=broker, tmp_path=tmp_path, children=children)
    crash.wait_until(lambda: "beat lock acquired" in beat.log(), timeout=30, what="the lock", child=beat)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [f"{APPLICATION_NAME}:{beat.pid}"],
        )
        assert cursor.fetchall() == [(True,)]
    crash.wait_until(lambda: "beat lock lost" in beat.log(), timeout=10, what="the loss noticed", child=beat)
    crash.wait_until(
        lambda: beat.log().count("beat lock acquired") == 2, timeout=10, what="the lock taken again", child=beat
    )
    assert lock_holders() == [f"{APPLICATION_NAME}:{beat.pid}"]
    assert beat.alive()
