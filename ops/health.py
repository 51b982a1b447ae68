"""The readiness checks behind /health/ready: database, cache, broker, and the two dead-man
switches (the billing-run tick, the audit sealer; ops/selectors.py).

Each check is bounded by a timeout: the broker's by HEALTH_CHECK_TIMEOUT_SECONDS (its
connection here, not the application's), the database's by its connect timeout
(DATABASE_CONNECT_TIMEOUT), a Redis cache's by CACHE_SOCKET_TIMEOUT. A failure says what
failed and the exception's class, never its message: messages can carry host names, user
names or a URL with its password."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from config.outages import discard_broken_connections


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.detail}


def _timed(name: str, probe: Callable[[], dict[str, Any]]) -> Check:
    started = time.monotonic()
    try:
        detail = probe()
    except Exception as exc:
        detail = {"error": type(exc).__name__}
        ok = False
    else:
        ok = bool(detail.pop("ok", True))
    detail["ms"] = round((time.monotonic() - started) * 1000, 1)
    return Check(name, ok, detail)


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        discard_broken_connections()  # the next request reconnects instead of reusing a dead socket
        raise
    return {}


def _cache() -> dict[str, Any]:
    key = f"ops:health:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=30)
    seen = cache.get(key)
    cache.delete(key)
    if seen != "1":
        return {"ok": False, "error": "value not read back"}
    return {}


def _writable(folder: str) -> bool:
    """Really writable (a file is created and removed), not only by its mode bits. The
    name never ends in `.msg`, so a worker never takes it for a message."""
    try:
        handle, path = tempfile.mkstemp(dir=folder, prefix=".health-", suffix=".probe")
    except OSError:
        return False
    os.close(handle)
    os.unlink(path)
    return True


def _broker() -> dict[str, Any]:
    from kombu import Connection

    from config.celery_app import app

    url = str(app.conf.broker_url or "")
    options = dict(app.conf.broker_transport_options or {})
    if url.startswith("filesystem://"):
        # The embedded broker is up when its folders take files (kombu creates none but control).
        wanted = [("in", options.get("data_folder_in")), ("out", options.get("data_folder_out"))]
        if options.get("store_processed"):
            wanted.append(("processed", options.get("processed_folder")))
        failed = [name for name, path in wanted if not path or not _writable(str(path))]
        if failed:
            return {"ok": False, "transport": "filesystem", "error": "folder not writable: " + ", ".join(failed)}
        return {"transport": "filesystem"}
    timeout = settings.HEALTH_CHECK_TIMEOUT_SECONDS
    options.update({"socket_timeout": timeout, "socket_connect_timeout": timeout})
    with Connection(url, connect_timeout=timeout, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        conn.default_channel  # noqa: B018 - opening the channel is the probe (Redis: a PING)
    return {}


def _billing_tick() -> dict[str, Any]:
    from ops.selectors import billing_tick_status

    tick = billing_tick_status()
    return {
        "ok": tick.ok,
        "last_success_at": tick.last_success_at.isoformat() if tick.last_success_at else None,
        "age_seconds": round(tick.age_seconds) if tick.age_seconds is not None else None,
        "threshold_seconds": tick.threshold_seconds,
        "message": tick.message,
    }


def _audit_sealer() -> dict[str, Any]:
    from ops.selectors import audit_sealing_status

    sealing = audit_sealing_status()
    return {
        "ok": sealing.ok,
        "unsealed": sealing.unsealed,
        "oldest_age_seconds": round(sealing.oldest_age_seconds) if sealing.oldest_age_seconds is not None else None,
        "threshold_seconds": sealing.threshold_seconds,
        "message": sealing.message,
    }


def _cache_in_database() -> bool:
    return bool(settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.db.DatabaseCache")


# (name, probe, needs the database)
CHECKS: tuple[tuple[str, Callable[[], dict[str, Any]], Callable[[], bool]], ...] = (
    ("database", _database, lambda: False),
    ("cache", _cache, _cache_in_database),
    ("broker", _broker, lambda: False),
    ("billing_tick", _billing_tick, lambda: True),
    ("audit_sealer", _audit_sealer, lambda: True),
)


def readiness() -> tuple[bool, dict[str, Any]]:
    """Every check, in order; ready when all are green. The body names what failed. With
    the database down, the checks that read it are red without trying again (each try
    would wait for the connect timeout once more)."""
    checks: list[Check] = []
    for name, probe, needs_database in CHECKS:
        if needs_database() and checks and not checks[0].ok:
            checks.append(Check(name, False, {"error": "database unavailable"}))
        else:
            checks.append(_timed(name, probe))
    failed = [c.name for c in checks if not c.ok]
    body = {
        "status": "ok" if not failed else "unavailable",
        "failed": failed,
        "checked_at": timezone.now().isoformat(),
        "checks": {c.name: c.as_json() for c in checks},
    }
    return not failed, body
