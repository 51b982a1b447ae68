"""Production smoke test (docs/deploy.md): `config.settings.production` under gunicorn with
`deploy/gunicorn.conf.py`, on the migrated PostgreSQL test database, a Redis of the test's
own (broker and cache) and our localstripe served over HTTPS with a test CA (production
refuses a plain-http Stripe). Requests arrive as the TLS-terminating proxy passes them on:
plain HTTP on loopback with `X-Forwarded-Proto: https` and the client's address appended to
`X-Forwarded-For` (DJANGO_BEHIND_TLS_PROXY=true, TRUSTED_PROXY_COUNT=1).

Exercised: the redirect of plain HTTP, the console login (HSTS, `__Host-` secure cookies,
CSRF, the audited client IP), an API token login and API calls (one of which reaches Stripe
over TLS), a signed webhook recorded and its mirror task queued in Redis, and an access
log without query strings. HIPAA 164.312(e)(1), 164.308(a)(7)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
import trustme
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from audit.models import AuditEvent
from billing.models import StripeEvent, StripeEventStatus
from billing.tests.support import crash
from config.tests.deploy_support import Answer, through_proxy
from config.tests.test_security import production_env

ROOT = crash.ROOT
BIN = Path(sys.executable).parent
PUBLIC_HOST = "billing.example.com"
CLIENT_IP = "203.0.113.7"  # what the proxy appends to X-Forwarded-For: the real client
PASSWORD = "smoke test password 7 correct horse"
START_TIMEOUT = 30.0


@dataclass
class Stack:
    port: int
    env: dict[str, str]
    broker: str
    web: crash.Child
    static_root: Path

    def request(
        self,
        method: str,
        path: str,
        *,
        https: bool = True,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        return through_proxy(
            self.port, method, path, host=PUBLIC_HOST, client_ip=CLIENT_IP, https=https, headers=headers, body=body
        )


@pytest.fixture
def children(on_postgres: None) -> Iterator[list[crash.Child]]:
    started: list[crash.Child] = []
    yield started
    for child in reversed(started):  # before the database flush, which would wait on their sessions
        child.stop()


@contextlib.contextmanager
def localstripe_over_tls(folder: Path, children: list[crash.Child]) -> Iterator[tuple[str, str]]:
    """Our localstripe behind TLS with a certificate for 127.0.0.1 from a new CA; yields
    (base URL, CA file)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        with cert_file.open("ab") as out:
            out.write(pem.bytes())
    port = crash.free_port()
    store = folder / "localstripe"
    store.mkdir()
    env = {**crash.subprocess_env("unused"), "TMPDIR": str(store)}
    argv = [sys.executable, "-m", "config.tests.deploy_support", "localstripe-tls", "--port", str(port)]
    child = crash.Child([*argv, "--cert", str(cert_file), "--key", str(key_file)], env, folder / "localstripe.log")
    children.append(child)
    url = f"https://127.0.0.1:{port}"

    def answers() -> bool:
        if not child.alive():
            raise AssertionError(f"localstripe over TLS exited:\n{child.log()}")
        try:
            requests.get(f"{url}/v1/account", verify=str(ca_file), timeout=1)
        except requests.ConnectionError:
            return False
        return True

    crash.wait_until(answers, timeout=START_TIMEOUT, poll=0.1, what="localstripe over TLS", child=child)
    yield url, str(ca_file)


@pytest.fixture
def stack(tmp_path: Path, children: list[crash.Child]) -> Iterator[Stack]:
    folder = Path(tempfile.mkdtemp(prefix="smoke-production-"))
    try:
        with crash.run_redis() as broker, localstripe_over_tls(folder, children) as (stripe_url, ca_file):
            db = connection.settings_dict
            port = crash.free_port()
            env = production_env(
                DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                CELERY_BROKER_URL=broker,
                CACHE_URL=broker.rsplit("/", 1)[0] + "/1",
                STRIPE_SECRET_KEY="sk_test_" + secrets.token_hex(16),  # test mode: livemode false
                STRIPE_WEBHOOK_SECRET_NEXT="",
                STRIPE_API_BASE=stripe_url,
                SSL_CERT_FILE=ca_file,  # the production process trusts the test CA like a system CA
                DJANGO_BEHIND_TLS_PROXY="true",
                TRUSTED_PROXY_COUNT="1",
                DJANGO_STATIC_ROOT=str(folder / "static"),
                GUNICORN_BIND=f"127.0.0.1:{port}",
                GUNICORN_WORKERS="2",
                PYTHONUNBUFFERED="1",
            )
            # As an upgrade does (docs/deploy.md §5): the proxy serves what this writes.
            collected = subprocess.run(
                [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert collected.returncode == 0, collected.stderr
            argv = [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "config.wsgi"]
            web = crash.Child(argv, env, folder / "gunicorn.log")
            children.append(web)

            def up() -> bool:
                if not web.alive():
                    raise AssertionError(f"gunicorn exited:\n{web.log()}")
                try:
                    return through_proxy(port, "GET", "/api/v1/", host=PUBLIC_HOST, client_ip=CLIENT_IP).status == 200
                except OSError:
                    return False

            crash.wait_until(up, timeout=START_TIMEOUT, poll=0.2, what="gunicorn", child=web)
            yield Stack(port=port, env=env, broker=broker, web=web, static_root=folder / "static")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def signed(body: bytes, secret: str) -> str:
    t = int(time.time())
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_serves_the_console_the_api_and_webhooks_under_gunicorn_with_production_settings(stack: Stack) -> None:
    # Hashed as production hashes (the test settings' fast MD5 hasher is not one production accepts).
    operator = get_user_model().objects.create_superuser(username="smoke-operator", email="", password=None)
    operator.password = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt())
    operator.save(update_fields=["password"])

    # Plain HTTP (no X-Forwarded-Proto from the proxy): redirected to HTTPS, nothing served.
    plain = stack.request("GET", "/admin/login/", https=False)
    assert plain.status == 301
    assert plain.header("Location") == f"https://{PUBLIC_HOST}/admin/login/"

    # The console's login page over HTTPS (as the proxy saw it): HSTS and secure cookies.
    page = stack.request("GET", "/admin/login/")
    assert page.status == 200, page.body[:500]
    assert page.header("Strict-Transport-Security") == "max-age=31536000; includeSubDomains; preload"
    assert page.header("X-Frame-Options") == "DENY"
    csrf_cookie = page.cookies()["__Host-csrftoken"]
    assert "Secure" in csrf_cookie and "Path=/" in csrf_cookie
    csrf_value = csrf_cookie.split(";", 1)[0].split("=", 1)[1]
    token_field = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
    assert token_field is not None
    # Every stylesheet, script and font the page asks for is in STATIC_ROOT, for the proxy.
    assets = set(re.findall(rb'(?:src|href)="/static/([^"?#]+)', page.body))
    assert len(assets) > 5
    missing = [a.decode() for a in assets if not (stack.static_root / a.decode()).is_file()]
    assert missing == []

    form = urllib.parse.urlencode(
        {
            "username": "smoke-operator",
            "password": PASSWORD,
            "csrfmiddlewaretoken": token_field.group(1).decode(),
            "next": "/admin/",
        }
    ).encode()
    login = stack.request(
        "POST",
        "/admin/login/",
        body=form,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"__Host-csrftoken={csrf_value}",
            "Origin": f"https://{PUBLIC_HOST}",
            "Referer": f"https://{PUBLIC_HOST}/admin/login/",
        },
    )
    assert login.status == 302, login.body[:800]
    assert login.header("Location") == "/admin/"
    session_cookie = login.cookies()["__Host-sessionid"]
    assert all(flag in session_cookie for flag in ("Secure", "HttpOnly", "SameSite=Lax"))
    session_value = session_cookie.split(";", 1)[0].split("=", 1)[1]
    console = stack.request("GET", "/admin/", headers={"Cookie": f"__Host-sessionid={session_value}"})
    # Production requires the second factor: an operator with no authenticator yet is sent
    # to enrol before any console page (config/mfa/; the flow itself is config/tests/test_mfa.py).
    assert console.status == 302 and console.header("Location").startswith("/admin/mfa/enrol/")
    enrol = stack.request("GET", console.header("Location"), headers={"Cookie": f"__Host-sessionid={session_value}"})
    assert enrol.status == 200
    # The client address is the proxy's X-Forwarded-For hop, not the proxy itself.
    logged_in = AuditEvent.objects.filter(action="auth.login").latest("seq")
    assert logged_in.source_ip == CLIENT_IP

    # An API token login, then API calls with the token.
    body = json.dumps({"username": "smoke-operator", "password": PASSWORD}).encode()
    issued = stack.request("POST", "/api/v1/auth/token/", body=body, headers={"Content-Type": "application/json"})
    assert issued.status == 200, issued.body
    auth = {"Authorization": f"Token {json.loads(issued.body)['token']}", "Content-Type": "application/json"}
    office = json.dumps({"name": "Smoke Test Clinic", "billing_email": "billing@smoke.example"}).encode()
    created = stack.request("POST", "/api/v1/offices/", body=office, headers=auth)
    assert created.status == 201, created.body
    office_id = json.loads(created.body)["id"]
    listed = stack.request("GET", "/api/v1/offices/?search=canary-query-string", headers=auth)
    assert listed.status == 200 and any(o["id"] == office_id for o in json.loads(listed.body)["results"])
    # This one reaches Stripe (our localstripe over TLS: customer, then a hosted setup page).
    session = stack.request("POST", f"/api/v1/offices/{office_id}/payment-method-session/", body=b"{}", headers=auth)
    assert session.status == 201, session.body
    assert json.loads(session.body)["id"].startswith("cs_test_")

    # A signed webhook delivery: answered 200, recorded once, its mirror queued in Redis.
    event = {
        "id": f"evt_smoke{secrets.token_hex(8)}",
        "object": "event",
        "type": "invoice.paid",
        "created": int(time.time()),
        "livemode": False,
        "api_version": "2026-08-26.dahlia",
        "data": {"object": {"id": "in_not_ours", "object": "invoice", "customer": "cus_not_ours"}},
    }
    raw = json.dumps(event).encode()
    secret = stack.env["STRIPE_WEBHOOK_SECRET"]
    delivered = stack.request(
        "POST",
        "/stripe/webhook/",
        body=raw,
        headers={"Content-Type": "application/json", "Stripe-Signature": signed(raw, secret)},
    )
    assert delivered.status == 200, delivered.body
    assert json.loads(delivered.body)["status"] == "processed"
    row = StripeEvent.objects.get(event_id=event["id"])
    assert row.status == StripeEventStatus.PROCESSED
    assert AuditEvent.objects.filter(action="webhook.received", target_id=str(row.pk)).count() == 1
    queued = [json.loads(m)["headers"]["task"] for m in redis.Redis.from_url(stack.broker).lrange("celery", 0, -1)]
    assert "billing.stripe.tasks.stripe_event_mirror_task" in queued
    forged = stack.request(
        "POST",
        "/stripe/webhook/",
        body=raw,
        headers={"Content-Type": "application/json", "Stripe-Signature": signed(raw, "whsec_wrong")},
    )
    assert forged.status == 400

    # The access log has the requests, without their query strings.
    crash.wait_until(lambda: '"GET /api/v1/offices/ HTTP/1.1" 200' in stack.web.log(100_000), timeout=5, what="log")
    access_log = stack.web.log(100_000)
    assert "canary-query-string" not in access_log
    assert '"POST /stripe/webhook/ HTTP/1.1" 200' in access_log
    enrol_line = r'"GET /admin/mfa/enrol/ HTTP/1.1" 200 \d+ \d+ms rid=[0-9a-f-]{8,}'
    assert re.search(enrol_line, access_log), access_log[-2000:]


def test_it_refuses_to_boot_gunicorn_with_production_settings_missing_a_secret(tmp_path: Path) -> None:
    """A missing secret stops the web process instead of serving (exit non-zero, the reason
    in its log), which is what systemd's Restart= and the operator then see."""
    env = production_env(DJANGO_SECRET_KEY=None, GUNICORN_BIND=f"127.0.0.1:{crash.free_port()}", GUNICORN_WORKERS="1")
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "config.wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set in production" in result.stdout + result.stderr
