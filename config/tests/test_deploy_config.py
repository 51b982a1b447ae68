"""Deployment configuration (docs/deploy.md): gunicorn's settings come from the environment
and its access log leaves query strings and Referers out (no PHI in logs); the production
settings take the beat lock's scheduler and the secret-key fallbacks for a rotation."""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from config.tests.test_security import production_settings

CONF = Path(settings.BASE_DIR) / "deploy" / "gunicorn.conf.py"


def gunicorn_conf(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in list(os.environ):
        if name.startswith("GUNICORN_") or name == "WEB_CONCURRENCY":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_it_reads_gunicorns_bind_workers_and_timeouts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = gunicorn_conf(
        monkeypatch,
        GUNICORN_BIND="127.0.0.1:9001,unix:/run/billing/web.sock",
        GUNICORN_WORKERS="3",
        GUNICORN_TIMEOUT="45",
        GUNICORN_GRACEFUL_TIMEOUT="20",
        GUNICORN_MAX_REQUESTS="1000",
        GUNICORN_FORWARDED_ALLOW_IPS="10.0.0.5",
    )
    assert conf["bind"] == ["127.0.0.1:9001", "unix:/run/billing/web.sock"]
    assert (conf["workers"], conf["timeout"], conf["graceful_timeout"]) == (3, 45, 20)
    assert (conf["max_requests"], conf["max_requests_jitter"]) == (1000, 100)
    assert conf["forwarded_allow_ips"] == "10.0.0.5"


def test_it_binds_gunicorn_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = gunicorn_conf(monkeypatch)
    assert conf["bind"] == ["127.0.0.1:8000"]
    assert conf["workers"] == 2 * (os.cpu_count() or 1) + 1
    assert gunicorn_conf(monkeypatch, WEB_CONCURRENCY="4")["workers"] == 4


def test_it_logs_no_query_string_referer_or_user_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = gunicorn_conf(monkeypatch)["access_log_format"]
    assert "%(U)s" in fmt  # the path alone
    for leaky in ("%(r)s", "%(q)s", "%(f)s", "%(a)s"):  # request line, query string, Referer, user agent
        assert leaky not in fmt
    assert "{x-request-id}o" in fmt  # ties a line to the audit trail


def test_it_schedules_through_the_beat_lock_and_reads_secret_key_fallbacks_in_production() -> None:
    s = production_settings(DJANGO_SECRET_KEY_FALLBACKS="old-key-" + "x" * 50)
    assert s["CELERY_BEAT_SCHEDULER"] == "config.beat_lock:LockedDatabaseScheduler"
    assert s["SECRET_KEY_FALLBACKS"] == ["old-key-" + "x" * 50]
    assert production_settings()["SECRET_KEY_FALLBACKS"] == []
