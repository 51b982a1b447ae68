"""The probes where they will be called from (issue 12, item 6): behind the host check
and, in production, the HTTPS redirect; and with the database gone, under gunicorn.

- Load balancers that probe with the target's IP as Host are admitted for the two probe
  paths only, when that host is listed in HEALTH_CHECK_HOSTS; every other path still
  answers 400 to them, and unknown hosts get 400 everywhere.
- Production settings (a fresh interpreter, as config/tests/test_security.py does): a
  plain-HTTP probe gets its 200, not the redirect; /metrics stays behind the redirect.
- PostgreSQL unreachable (a port nobody listens on; the URL carries a password as a
  canary): gunicorn serves /health/live 200, /health/ready 503 naming the database,
  /metrics says the database could not be read; nothing of the URL leaks."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client

from config.tests.outage_support import ROOT, answers, app_env, free_port, http, wait_for
from config.tests.test_security import production_env, run_python

pytestmark = pytest.mark.django_db


# --- Hosts ------------------------------------------------------------------------------------


def test_it_admits_the_load_balancers_host_for_the_probes_only(client: Client, settings, broker, fresh_tick) -> None:
    settings.ALLOWED_HOSTS = ["billing.example.com"]
    settings.HEALTH_CHECK_HOSTS = ["10.0.0.5"]
    assert client.get("/health/live", HTTP_HOST="billing.example.com").status_code == 200
    assert client.get("/health/live", HTTP_HOST="10.0.0.5").status_code == 200
    assert client.get("/health/live", HTTP_HOST="10.0.0.5:8000").status_code == 200
    assert client.get("/health/ready", HTTP_HOST="10.0.0.5").status_code == 200
    assert client.get("/api/v1/", HTTP_HOST="10.0.0.5").status_code == 400  # nothing else for that host
    assert client.get("/admin/login/", HTTP_HOST="10.0.0.5").status_code == 400
    assert client.get("/metrics", HTTP_HOST="10.0.0.5").status_code == 400
    assert client.get("/health/live", HTTP_HOST="evil.example").status_code == 400
    settings.HEALTH_CHECK_HOSTS = []
    assert client.get("/health/live", HTTP_HOST="10.0.0.5").status_code == 400


# --- Production settings ------------------------------------------------------------------------

PROBE_IN_PRODUCTION = """
import json, django
django.setup()
from django.test import Client
seen = {}
for name, path, host in [
    ("live", "/health/live", "billing.example.com"),
    ("live_by_ip", "/health/live", "10.0.0.5"),
    ("api_by_ip", "/api/v1/", "10.0.0.5"),
    ("metrics", "/metrics", "billing.example.com"),
]:
    r = Client().get(path, HTTP_HOST=host)
    seen[name] = [r.status_code, r.get("Location")]
seen["metrics_tls_no_token"] = Client().get("/metrics", HTTP_HOST="billing.example.com", secure=True).status_code
print(json.dumps(seen))
"""


def test_it_answers_plain_http_probes_in_production_and_keeps_metrics_behind_https() -> None:
    env = production_env(HEALTH_CHECK_HOSTS="10.0.0.5", METRICS_TOKEN="m" * 40)
    result = run_python(PROBE_IN_PRODUCTION, env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["live"] == [200, None]  # not redirected: a load balancer probes over plain HTTP
    assert seen["live_by_ip"] == [200, None]
    assert seen["api_by_ip"][0] == 400
    assert seen["metrics"] == [301, "https://billing.example.com/metrics"]
    assert seen["metrics_tls_no_token"] == 401


def test_it_refuses_a_short_metrics_token_in_production() -> None:
    result = run_python("import config.settings.production\n", production_env(METRICS_TOKEN="short"))
    assert result.returncode != 0
    assert "METRICS_TOKEN" in result.stderr


# --- The database down, under gunicorn -------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(env: dict[str, str], folder: Path) -> Iterator[str]:
    port = free_port()
    log = folder / "gunicorn.log"
    argv = [sys.executable, "-m", "gunicorn", "config.wsgi:application", "-b", f"127.0.0.1:{port}", "-w", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(port) or proc.poll() is not None, 60, "gunicorn", log)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_it_is_live_but_not_ready_when_the_database_is_unreachable(tmp_path: Path) -> None:
    closed = free_port()  # nobody listens there
    canary = "canary-password-7f3e"
    token = "t" * 40
    env = app_env(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=f"postgres://billing:{canary}@127.0.0.1:{closed}/billing?connect_timeout=2",
        METRICS_TOKEN=token,
    )
    with gunicorn(env, tmp_path) as url:
        live = http("GET", url + "/health/live")
        assert live.status == 200 and live.data == {"status": "ok"}
        ready = http("GET", url + "/health/ready")
        assert ready.status == 503, ready.body
        assert "database" in ready.data["failed"]
        database = ready.data["checks"]["database"]
        assert database["ok"] is False and database["error"] == "OperationalError"
        assert set(database) == {"ok", "error", "ms"}  # the exception's class, never its message
        # What reads the database is red without a second wait for it (the cache is the database's here).
        for name in ("cache", "billing_tick", "audit_sealer"):
            assert ready.data["checks"][name] == {"ok": False, "error": "database unavailable"}, name
        assert ready.seconds < 5
        assert canary.encode() not in ready.body and str(closed).encode() not in ready.body
        assert b"postgres" not in ready.body.lower()
        scrape = http("GET", url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scrape.status == 200
        assert b"ops_metrics_database_up 0.0" in scrape.body
        assert canary.encode() not in scrape.body
        assert http("GET", url + "/health/live").status == 200  # still live after the failed checks
