"""Fixtures of the health and metrics tests: the Celery broker pointed where a test says,
Redis on the shared server's database 7 (this suite's own index), and throwaway
redis-servers (config/tests/outage_support.py) for the outages."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from config.celery_app import app
from config.tests.outage_support import RedisServer
from ops.models import Heartbeat
from ops.services import BILLING_TICK

SHARED_REDIS = "redis://127.0.0.1:6379/7"  # database 7: this suite's own on the shared server


def shared_redis_or_skip() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return SHARED_REDIS
    except OSError:
        pytest.skip("needs the Redis server on 127.0.0.1:6379 (database 7 is used)")


def redis_server_or_skip() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH (apt-get install redis-server) to take a real Redis down")


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Point the Celery app at a broker for this test: `broker("redis://…")`, or the
    embedded filesystem broker in a folder of the test's (`broker(folder=…)`). Celery reads
    CELERY_BROKER_URL from the environment before its own setting (CI sets it), so the
    variable is set for the test too."""
    before = (app.conf.broker_url, app.conf.broker_transport_options)

    def use(url: str = "filesystem://", *, folder: Path | None = None) -> None:
        monkeypatch.setenv("CELERY_BROKER_URL", url)
        if url.startswith("filesystem://"):
            where = folder if folder is not None else tmp_path / "broker"
            app.conf.broker_transport_options = {
                "data_folder_in": str(where),
                "data_folder_out": str(where),
                "processed_folder": str(where / "processed"),
                "control_folder": str(where / "control"),
                "store_processed": False,
            }
        else:
            app.conf.broker_transport_options = {}
        app.conf.broker_url = url
        _forget_producer_pool()

    (tmp_path / "broker" / "processed").mkdir(parents=True)
    use()
    yield use
    app.conf.broker_url, app.conf.broker_transport_options = before
    _forget_producer_pool()


def _forget_producer_pool() -> None:
    """Celery keeps the producer pool of the first broker it published to: forget it, so the
    next publish takes kombu's pool for the broker just configured (kombu keeps one per URL)."""
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    redis_server_or_skip()
    with RedisServer.start() as server:
        yield server


@pytest.fixture
def fresh_tick() -> Callable[..., Heartbeat]:
    """Record a successful billing-run tick `ago` before now (default: just now)."""

    def beat(ago: timedelta = timedelta(0)) -> Heartbeat:
        row, _ = Heartbeat.objects.update_or_create(
            name=BILLING_TICK, defaults={"last_success_at": timezone.now() - ago, "successes": 1}
        )
        return row

    beat()
    return beat


@contextmanager
def redis_cache(settings: Any, url: str) -> Iterator[None]:
    """The default cache on Redis at `url` for the block (Django resets its cache handlers)."""
    previous = settings.CACHES
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
        }
    }
    try:
        yield
    finally:
        settings.CACHES = previous
