"""Security controls around the API (spec §9; HIPAA 164.312(b), (d), (e)): the validated
client IP behind trusted proxies, rate limits on logins and API calls, and the production
settings (HTTPS, HSTS, cookies, `check --deploy`, no secret defaults)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from auditlog.models import LogEntry
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client, RequestFactory
from rest_framework.settings import api_settings

from audit.middleware import client_ip
from audit.models import AuditEvent
from billing.tests.support.factories import at
from config.authentication import ApiRateThrottle
from config.urls import api_v1
from offices.models import Office

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
ROOT = Path(django_settings.BASE_DIR)
TOKEN_URL = "/api/v1/auth/token/"
PASSWORD = "correct horse battery staple 7"


@pytest.fixture
def db_throttles(db: None) -> None:
    """Database access, with no throttle counts left by another test (the database cache
    rolls back with each test; a shared Redis from CACHE_URL would not)."""
    cache.clear()


# --- The client IP -----------------------------------------------------------------------

GARBAGE = [
    "not-an-ip",
    "<script>alert(1)</script>",
    "1.2.3.4' OR '1'='1",
    "999.1.1.1",
    "fe80::1%eth0",
    "1.2.3.4\r\nX-Injected: yes",
    ",,,",
    "unknown",
    "1.2.3.4, " * 400,  # oversized
]


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "expected"),
    [
        (0, None, "192.0.2.10"),
        (0, "198.51.100.1", "192.0.2.10"),  # no trusted proxy: the header is the client's word
        (1, None, "192.0.2.10"),
        (1, "198.51.100.1", "198.51.100.1"),
        (1, "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # the left entry is client-controlled
        (2, "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),
        (2, "198.51.100.1", "192.0.2.10"),  # fewer entries than proxies: not from our proxies
        (1, " 2001:DB8::7 ", "2001:db8::7"),  # canonical form
        (1, "[2001:db8::7]:4711", "2001:db8::7"),
        (1, "198.51.100.1:4711", "198.51.100.1"),
        *[(1, junk, "192.0.2.10") for junk in GARBAGE],
        (2, "198.51.100.1, not-an-ip", "198.51.100.1"),  # the proxy's own hop may be odd
        (2, "not-an-ip, 10.0.0.2", "192.0.2.10"),
    ],
)
def test_it_takes_the_client_ip_from_the_trusted_hop_of_x_forwarded_for(
    settings: Any, trusted: int, forwarded_for: str | None, expected: str
) -> None:
    settings.TRUSTED_PROXY_COUNT = trusted
    headers = {"REMOTE_ADDR": "192.0.2.10"}
    if forwarded_for is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded_for
    assert client_ip(RequestFactory().get("/", **headers)) == expected


def test_it_has_no_client_ip_when_remote_addr_itself_is_not_an_address(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    request = RequestFactory().get("/", REMOTE_ADDR="unix-socket", HTTP_X_FORWARDED_FOR="junk")
    assert client_ip(request) is None


@pytest.mark.usefixtures("db_throttles")
@pytest.mark.parametrize("junk", GARBAGE, ids=range(len(GARBAGE)))
def test_it_neither_fails_nor_stores_garbage_x_forwarded_for(settings: Any, junk: str) -> None:
    """Behind one proxy, a forged header must not reach the audit trail or django-auditlog
    (whose stock middleware stores the leftmost entry raw: a 500 on PostgreSQL's inet)."""
    settings.TRUSTED_PROXY_COUNT = 1
    operator = get_user_model().objects.create_user(username="op", password=PASSWORD, is_staff=True)
    client = Client()
    client.force_login(operator)
    response = client.post(
        "/api/v1/offices/",
        data=json.dumps({"name": "Forwarded Clinic", "billing_email": "billing@forwarded.example"}),
        content_type="application/json",
        HTTP_X_FORWARDED_FOR=junk,
        HTTP_X_FORWARDED_PORT="not-a-port",
        HTTP_X_CORRELATION_ID="x" * 1000,
    )
    assert response.status_code == 201, response.content
    office = Office.objects.get(pk=response.json()["id"])
    created = AuditEvent.objects.get(action="office.created", target_id=str(office.pk))
    assert created.source_ip == "127.0.0.1"
    entry = LogEntry.objects.get_for_object(office).get(action=LogEntry.Action.CREATE)
    assert (entry.remote_addr, entry.remote_port) == ("127.0.0.1", None)
    assert entry.cid == response["X-Request-ID"] == created.request_id
    assert entry.actor == operator


@pytest.mark.usefixtures("db_throttles")
def test_it_records_the_proxied_client_ip_in_both_audit_trails(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    operator = get_user_model().objects.create_user(username="op", password=PASSWORD, is_staff=True)
    client = Client()
    client.force_login(operator)
    response = client.post(
        "/api/v1/offices/",
        data=json.dumps({"name": "Proxied Clinic", "billing_email": "billing@proxied.example"}),
        content_type="application/json",
        REMOTE_ADDR="10.0.0.2",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.77",
    )
    assert response.status_code == 201
    office = Office.objects.get(pk=response.json()["id"])
    assert AuditEvent.objects.get(action="office.created").source_ip == "198.51.100.77"
    assert LogEntry.objects.get_for_object(office).get().remote_addr == "198.51.100.77"


# --- Rate limits ---------------------------------------------------------------------------


def _login(password: str, **extra: Any) -> Any:
    body = json.dumps({"username": "op", "password": password})
    return Client().post(TOKEN_URL, data=body, content_type="application/json", **extra)


def test_it_rates_logins_at_10_per_minute_per_ip_and_api_calls_at_600_per_minute_per_user() -> None:
    rates = api_settings.DEFAULT_THROTTLE_RATES
    if "API_LOGIN_RATE" not in os.environ:
        assert rates["login"] == "10/min"
    if "API_RATE" not in os.environ:
        assert rates["api"] == "600/min"
    assert list(api_settings.DEFAULT_THROTTLE_CLASSES) == [ApiRateThrottle]


def test_it_throttles_every_api_endpoint() -> None:
    unthrottled = [
        str(p.pattern)
        for p in api_v1
        if ApiRateThrottle not in p.callback.view_class.throttle_classes  # type: ignore[attr-defined]
    ]
    assert unthrottled == []


@pytest.mark.usefixtures("db_throttles")
def test_it_answers_the_eleventh_login_attempt_in_a_minute_with_429() -> None:
    get_user_model().objects.create_user(username="op", password=PASSWORD)
    with at(T0):
        for _ in range(10):
            assert _login("wrong").status_code == 401
        response = _login("wrong")
        assert response.status_code == 429
        body = response.json()
        assert set(body) == {"message", "extra"}
        assert "throttled" in body["message"].lower()
        assert int(response["Retry-After"]) <= 60
        assert _login(PASSWORD).status_code == 429  # even with the right password
        assert _login(PASSWORD, REMOTE_ADDR="192.0.2.99").status_code == 200  # another address
    # Throttled attempts never reached the password check: ten failures audited, not twelve.
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 10
    with at(T0 + timedelta(seconds=61)):
        assert _login(PASSWORD).status_code == 200


@pytest.mark.usefixtures("db_throttles")
def test_it_counts_logins_per_real_client_behind_the_trusted_proxy(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    get_user_model().objects.create_user(username="op", password=PASSWORD)
    with at(T0):
        for i in range(10):
            # A forged leftmost entry changes nothing: the proxy's hop is what counts.
            assert _login("wrong", HTTP_X_FORWARDED_FOR=f"10.66.0.{i}, 198.51.100.5").status_code == 401
        assert _login("wrong", HTTP_X_FORWARDED_FOR="198.51.100.5").status_code == 429
        assert _login("wrong", HTTP_X_FORWARDED_FOR="garbage").status_code == 401  # REMOTE_ADDR's bucket
        assert _login("wrong", HTTP_X_FORWARDED_FOR="198.51.100.6").status_code == 401


@pytest.mark.usefixtures("db_throttles")
def test_it_throttles_api_calls_per_user(settings: Any) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"login": "10/min", "api": "3/min"},
    }
    users = get_user_model().objects
    first, second = (users.create_user(username=f"op{i}", password=PASSWORD, is_staff=True) for i in (1, 2))
    with at(T0):
        one, two = Client(), Client()
        one.force_login(first)
        two.force_login(second)
        assert [one.get("/api/v1/offices/").status_code for _ in range(3)] == [200, 200, 200]
        throttled = one.get("/api/v1/offices/")
        assert throttled.status_code == 429
        assert set(throttled.json()) == {"message", "extra"}
        assert two.get("/api/v1/offices/").status_code == 200  # per user, not global
    with at(T0 + timedelta(seconds=61)):
        assert one.get("/api/v1/offices/").status_code == 200


# --- A cache outage (issue 8, defect 16) ------------------------------------------------------


class OwnRedis:
    """A redis-server of this test's own on a free port (never the shared one on 6379),
    with nothing persisted: stopped and started again, it is empty."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        assert self.port != 6379
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.ConnectionError:
                pass
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # an outage, not a clean shutdown
            self.process.wait(timeout=10)
        self.process = None

    def stored_keys(self) -> list[bytes]:
        return list(redis.Redis(port=self.port).keys("*"))


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("needs redis-server on PATH (apt-get install redis-server) to take a real cache down")
    server = OwnRedis(executable)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.django_db
def test_the_api_and_logins_keep_answering_while_the_cache_is_down(
    settings: Any, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Throttles fail open: with CACHE_URL's Redis down, logins and API calls answer as
    usual (not 500), unthrottled, with one warning per interval; Redis back, they count again."""
    import config.authentication as authentication

    monkeypatch.setattr(authentication, "_cache_down", authentication.CacheDownWarning())
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": own_redis.url}}
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"login": "3/min", "api": "4/min"},
    }
    get_user_model().objects.create_user(username="op", password=PASSWORD, is_staff=True)

    def office(n: int) -> int:
        body = json.dumps({"name": f"Outage Clinic {n}", "billing_email": f"billing{n}@outage.example"})
        return int(api.post("/api/v1/offices/", data=body, content_type="application/json").status_code)

    with at(T0), caplog.at_level(logging.WARNING, logger="config.authentication"):
        # Redis up: it works, and the counts are in this Redis.
        login = _login(PASSWORD)
        assert login.status_code == 200, login.content
        api = Client(HTTP_AUTHORIZATION=f"Token {login.json()['token']}")
        assert api.get("/api/v1/offices/").status_code == 200
        assert sorted(k.split(b"_")[1] for k in own_redis.stored_keys()) == [b"api", b"login"]

        # Redis down: more than either rate allows, and every request is answered.
        own_redis.stop()
        assert [_login(PASSWORD).status_code for _ in range(4)] == [200] * 4
        assert [api.get("/api/v1/offices/").status_code for _ in range(4)] == [200] * 4
        assert [office(n) for n in range(2)] == [201, 201]
        warned = [r for r in caplog.records if r.name == "config.authentication"]
        assert len(warned) == 1, [r.getMessage() for r in warned]  # not one per request
        assert warned[0].levelno == logging.WARNING
        assert "failing open" in warned[0].getMessage() and "ConnectionError" in warned[0].getMessage()

        # Redis back (empty): the limits hold again.
        own_redis.start()
        assert [_login(PASSWORD).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert [api.get("/api/v1/offices/").status_code for _ in range(5)] == [200] * 4 + [429]
        assert sorted(k.split(b"_")[1] for k in own_redis.stored_keys()) == [b"api", b"login"]
    assert len([r for r in caplog.records if r.name == "config.authentication"]) == 1


def test_it_warns_about_a_cache_outage_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import config.authentication as authentication

    clock = [1000.0]
    monkeypatch.setattr(authentication.time, "monotonic", lambda: clock[0])
    warning = authentication.CacheDownWarning(interval_seconds=60)
    error = redis.ConnectionError("Connection refused")
    with caplog.at_level(logging.WARNING, logger="config.authentication"):
        for _ in range(5):
            warning.emit("api", error)
        clock[0] += 59
        warning.emit("login", error)
        clock[0] += 2
        warning.emit("api", error)
    messages = [r.getMessage() for r in caplog.records if r.name == "config.authentication"]
    assert len(messages) == 2, messages
    assert "5 more" in messages[1]  # what the interval held back is counted, not lost


# --- Production settings -------------------------------------------------------------------

# Run in a fresh interpreter: the settings module fails at import by design. `.env` is not
# read there (a developer's .env must not fill in what the test leaves out).
_NO_DOTENV = "import environ; environ.Env.read_env = classmethod(lambda cls, *a, **k: None)\n"


def production_env(**overrides: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": "billing.example.com",
        "STRIPE_SECRET_KEY": "sk_live_" + secrets.token_hex(16),
        "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(24),
        "STRIPE_PUSH_ENABLED": "true",
        "AUDIT_HMAC_KEYS": f"k1:{secrets.token_urlsafe(48)}",
        "CACHE_URL": "locmemcache://",
        "DATABASE_URL": f"sqlite:///{ROOT / 'var' / 'unused-production-check.sqlite3'}",
        # The offices' emails (notifications/): production refuses to start without SMTP over TLS.
        "EMAIL_URL": "smtp+tls://mailer:" + secrets.token_hex(8) + "@smtp.billing.example.com:587",
        "DEFAULT_FROM_EMAIL": "Clinic billing <billing@billing.example.com>",
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _NO_DOTENV + code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def production_settings(**overrides: str | None) -> dict[str, Any]:
    code = (
        "import json, config.settings.production as s\n"
        "names = [n for n in dir(s) if n.isupper()]\n"
        "print(json.dumps({n: getattr(s, n) for n in names}, default=str))\n"
    )
    result = run_python(code, production_env(**overrides))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_it_reports_nothing_on_check_deploy_with_production_settings() -> None:
    code = (
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'DEBUG'])\n"
    )
    result = run_python(code, production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_it_forces_https_hsts_and_secure_cookies_in_production() -> None:
    s = production_settings()
    assert s["DEBUG"] is False
    assert s["SECURE_SSL_REDIRECT"] is True
    assert s["SECURE_HSTS_SECONDS"] >= 365 * 24 * 3600
    assert s["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert s["SESSION_COOKIE_SECURE"] is True and s["CSRF_COOKIE_SECURE"] is True
    assert s["SESSION_COOKIE_HTTPONLY"] is True and s["CSRF_COOKIE_HTTPONLY"] is True
    assert s["SESSION_COOKIE_SAMESITE"] in ("Lax", "Strict") and s["CSRF_COOKIE_SAMESITE"] in ("Lax", "Strict")
    assert s["X_FRAME_OPTIONS"] == "DENY"
    assert s["SESSION_COOKIE_AGE"] <= 15 * 60 and s["SESSION_SAVE_EVERY_REQUEST"] is True
    assert "SECURE_PROXY_SSL_HEADER" not in s  # only when a proxy says so (next test)


def test_it_trusts_x_forwarded_proto_only_behind_a_declared_tls_proxy() -> None:
    s = production_settings(DJANGO_BEHIND_TLS_PROXY="true")
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_it_redirects_plain_http_and_sends_hsts_over_https_in_production() -> None:
    code = (
        "import json, django\n"
        "django.setup()\n"
        "from django.test import Client\n"
        "plain = Client().get('/api/v1/offices/', HTTP_HOST='billing.example.com')\n"
        "tls = Client().get('/api/v1/offices/', HTTP_HOST='billing.example.com', secure=True)\n"
        "print(json.dumps({'plain': [plain.status_code, plain.get('Location')],\n"
        "                  'tls': [tls.status_code, tls.get('Strict-Transport-Security')]}))\n"
    )
    result = run_python(code, production_env())
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [301, "https://billing.example.com/api/v1/offices/"]
    status, hsts = seen["tls"]
    assert status == 401
    assert "max-age=31536000" in hsts and "includeSubDomains" in hsts


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "dev-only-insecure-key-change-me-0123456789abcdef"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "short"}, "DJANGO_SECRET_KEY"),
        ({"STRIPE_SECRET_KEY": None}, "STRIPE_SECRET_KEY"),
        ({"STRIPE_SECRET_KEY": "  "}, "STRIPE_SECRET_KEY"),
        ({"DJANGO_ALLOWED_HOSTS": None}, "DJANGO_ALLOWED_HOSTS"),
    ],
    ids=[
        "no secret key",
        "empty secret key",
        "development key",
        "short key",
        "no stripe key",
        "blank stripe key",
        "no hosts",
    ],
)
def test_it_refuses_to_start_in_production_without_its_secrets(overrides: dict[str, str | None], named: str) -> None:
    result = run_python("import config.settings.production\n", production_env(**overrides))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr
