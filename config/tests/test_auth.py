"""Authentication (spec §1, §9, §10; HIPAA 164.312(a) automatic logoff, (b) audit of logins,
(d) authentication): API tokens with an expiry, token revocation, the session idle timeout,
and the audit entries every login, logout and failed login leaves."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.test import Client
from knox.models import AuthToken

from audit.models import AuditEvent
from billing.tests.support.factories import at

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
TOKEN_URL = "/api/v1/auth/token/"
LOGOUT_URL = "/api/v1/auth/logout/"
PROTECTED = "/api/v1/offices/"
PASSWORD = "correct horse battery staple 7"


@pytest.fixture(autouse=True)
def fresh_throttles(db: None) -> None:
    # The database cache rolls back with each test; a shared Redis (CACHE_URL) would not.
    cache.clear()


@pytest.fixture
def operator() -> Any:
    return get_user_model().objects.create_user(username="op", password=PASSWORD, is_staff=True)


def post_json(client: Client, url: str, body: Any, **extra: Any) -> Any:
    return client.post(url, data=json.dumps(body), content_type="application/json", **extra)


def obtain_token(username: str = "op", password: str = PASSWORD, **extra: Any) -> Any:
    return post_json(Client(), TOKEN_URL, {"username": username, "password": password}, **extra)


def with_token(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {token}")


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


# --- Tokens ----------------------------------------------------------------------------


def test_it_issues_a_token_that_authenticates_api_requests_and_says_when_it_expires(operator: Any) -> None:
    with at(T0):
        response = obtain_token()
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"token", "token_type", "expiry"}
        assert body["token_type"] == "Token"
        ttl = settings.REST_KNOX["TOKEN_TTL"]
        assert datetime.fromisoformat(body["expiry"].replace("Z", "+00:00")) == T0 + ttl
        assert response["Cache-Control"] == "no-store"

        assert with_token(body["token"]).get(PROTECTED).status_code == 200
        assert Client().get(PROTECTED).status_code == 401


def test_it_stores_only_a_hash_of_the_token(operator: Any) -> None:
    with at(T0):
        token = obtain_token().json()["token"]
    rows = json.dumps(list(AuthToken.objects.values()), cls=DjangoJSONEncoder)
    assert token not in rows
    assert token[:15] in rows and len(token) == 64  # a lookup prefix is kept, not the secret


def test_it_stops_accepting_a_token_once_it_has_expired(operator: Any) -> None:
    ttl = settings.REST_KNOX["TOKEN_TTL"]
    with at(T0):
        token = obtain_token().json()["token"]
    with at(T0 + ttl - timedelta(seconds=1)):
        assert with_token(token).get(PROTECTED).status_code == 200
    with at(T0 + ttl + timedelta(seconds=1)):
        response = with_token(token).get(PROTECTED)
    assert response.status_code == 401
    assert set(response.json()) == {"message", "extra"}
    assert response["WWW-Authenticate"].startswith("Token")


def test_it_does_not_extend_a_token_by_using_it(operator: Any) -> None:
    ttl = settings.REST_KNOX["TOKEN_TTL"]
    with at(T0):
        token = obtain_token().json()["token"]
    for hours in range(1, int(ttl.total_seconds() // 3600)):
        with at(T0 + timedelta(hours=hours)):
            assert with_token(token).get(PROTECTED).status_code == 200
    with at(T0 + ttl + timedelta(seconds=1)):
        assert with_token(token).get(PROTECTED).status_code == 401


def test_it_revokes_the_presented_token_on_logout_and_keeps_the_others(operator: Any) -> None:
    with at(T0):
        first = obtain_token().json()["token"]
        second = obtain_token().json()["token"]

        response = with_token(first).post(LOGOUT_URL)

        assert response.status_code == 204
        assert with_token(first).get(PROTECTED).status_code == 401
        assert with_token(second).get(PROTECTED).status_code == 200
    assert AuthToken.objects.filter(user=operator).count() == 1


def test_it_ends_the_session_on_logout_with_a_session(operator: Any) -> None:
    client = Client()
    with at(T0):
        client.force_login(operator)
        assert client.get(PROTECTED).status_code == 200
        assert client.post(LOGOUT_URL).status_code == 204
        assert client.get(PROTECTED).status_code == 401


def test_it_refuses_logout_without_credentials() -> None:
    response = Client().post(LOGOUT_URL)
    assert response.status_code == 401
    assert set(response.json()) == {"message", "extra"}


def test_it_refuses_a_wrong_password_with_401_in_the_error_format(operator: Any) -> None:
    response = obtain_token(password="wrong")
    assert response.status_code == 401
    assert response.json() == {"message": "Invalid username or password.", "extra": {}}
    assert response["WWW-Authenticate"].startswith("Token")
    assert not AuthToken.objects.exists()


def test_it_refuses_an_inactive_user_even_with_the_right_password(operator: Any) -> None:
    operator.is_active = False
    operator.save()
    assert obtain_token().status_code == 401
    assert not AuthToken.objects.exists()


def test_it_rejects_a_token_request_without_username_or_password() -> None:
    response = post_json(Client(), TOKEN_URL, {"username": "op"})
    assert response.status_code == 400
    assert response.json()["extra"]["fields"].keys() == {"password"}


def test_it_ignores_a_stale_token_header_when_logging_in(operator: Any) -> None:
    response = obtain_token(HTTP_AUTHORIZATION="Token deadbeef-not-a-token")
    assert response.status_code == 200


def test_it_limits_the_unexpired_tokens_a_user_may_hold(operator: Any) -> None:
    limit = settings.REST_KNOX["TOKEN_LIMIT_PER_USER"]
    with at(T0):
        for _ in range(limit):
            # Each attempt is a login from a different address: the per-IP login throttle
            # is not what this test is about.
            assert obtain_token(REMOTE_ADDR=f"192.0.2.{_ + 1}").status_code == 200
        response = obtain_token(REMOTE_ADDR="192.0.2.200")
    assert response.status_code == 403
    assert response.json()["extra"] == {"limit": limit}
    [refused] = events("auth.login_failed")
    assert (refused.outcome, refused.reason, refused.target_id) == ("denied", "token limit reached", str(operator.pk))
    with at(T0 + settings.REST_KNOX["TOKEN_TTL"] + timedelta(seconds=1)):
        assert obtain_token(REMOTE_ADDR="192.0.2.201").status_code == 200  # expired ones no longer count


@pytest.mark.parametrize(
    "header",
    [
        "Token",
        "Token a b",
        "Token \u00e9\u00e8\u00ff",  # not UTF-8 once encoded as the WSGI latin-1 header
        "Token abc\x00def",
        "Token " + "a" * 5000,
        "Token ../../etc/passwd",
    ],
    ids=["no token", "spaces", "latin-1 bytes", "nul byte", "very long", "path"],
)
def test_it_answers_malformed_token_headers_with_401_not_500(header: str) -> None:
    response = Client(HTTP_AUTHORIZATION=header).get(PROTECTED)
    assert response.status_code == 401
    assert set(response.json()) == {"message", "extra"}


# --- Session idle timeout (automatic logoff) --------------------------------------------


def test_it_logs_a_session_out_after_the_idle_timeout(operator: Any) -> None:
    idle = timedelta(seconds=settings.SESSION_COOKIE_AGE)
    assert idle <= timedelta(minutes=15)
    client = Client()
    with at(T0):
        client.force_login(operator)
    with at(T0 + idle - timedelta(seconds=1)):
        assert client.get(PROTECTED).status_code == 200
    with at(T0 + 2 * idle - timedelta(seconds=2)):  # activity restarted the clock
        assert client.get(PROTECTED).status_code == 200
    with at(T0 + 3 * idle):  # idle for longer than the timeout
        assert client.get(PROTECTED).status_code == 401
        assert client.get("/admin/").status_code == 302  # the operator console too


def test_it_sends_the_session_cookie_with_the_idle_timeout_as_its_age(operator: Any) -> None:
    client = Client()
    with at(T0):
        client.force_login(operator)
        response = client.get(PROTECTED)
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert int(cookie["max-age"]) == settings.SESSION_COOKIE_AGE
    assert cookie["httponly"]


# --- Audit of logins ------------------------------------------------------------------


def test_it_audits_a_failed_token_login_as_denied_without_the_password(operator: Any) -> None:
    secret = "Hunter2-not-the-password"
    response = obtain_token(password=secret, REMOTE_ADDR="198.51.100.23")
    assert response.status_code == 401

    [entry] = events("auth.login_failed")
    assert entry.outcome == "denied"
    assert entry.actor_type == "system" and entry.actor_id == ""
    assert (entry.target_type, entry.target_id) == ("auth.User", str(operator.pk))
    assert entry.data == {"username": "op", "path": TOKEN_URL}
    assert entry.source_ip == "198.51.100.23"
    assert entry.request_id == response["X-Request-ID"]
    dumped = json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder)
    assert secret not in dumped and PASSWORD not in dumped


def test_it_audits_a_failed_login_for_an_unknown_username_without_a_target() -> None:
    assert obtain_token(username="nobody-here").status_code == 401
    [entry] = events("auth.login_failed")
    assert (entry.target_type, entry.target_id) == ("", "")
    assert entry.data["username"] == "nobody-here"


def test_it_refuses_an_overlong_username_before_trying_any_password() -> None:
    assert post_json(Client(), TOKEN_URL, {"username": "u" * 151, "password": "x"}).status_code == 400
    assert events("auth.login_failed") == []  # malformed, not an attempt
    assert obtain_token(username="u" * 150).status_code == 401
    [entry] = events("auth.login_failed")
    assert entry.data["username"] == "u" * 150


def test_it_audits_a_token_login_and_logout_as_the_user(operator: Any) -> None:
    with at(T0):
        response = obtain_token(REMOTE_ADDR="203.0.113.5")
        with_token(response.json()["token"]).post(LOGOUT_URL, REMOTE_ADDR="203.0.113.5")
    [login] = events("auth.login")
    [logout] = events("auth.logout")
    for entry in (login, logout):
        assert (entry.actor_type, entry.actor_id, entry.actor_label) == ("user", str(operator.pk), "op")
        assert entry.outcome == "success"
        assert entry.source_ip == "203.0.113.5"
    assert login.data == {"path": TOKEN_URL}
    assert login.ts == T0
    assert response.json()["token"] not in json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder)
    operator.refresh_from_db()
    assert operator.last_login == T0


def test_it_audits_session_logins_and_failures_at_the_operator_console(operator: Any) -> None:
    client = Client()
    bad = client.post("/admin/login/", {"username": "op", "password": "nope"})
    assert bad.status_code == 200  # the form again, with an error
    good = client.post("/admin/login/", {"username": "op", "password": PASSWORD})
    assert good.status_code == 302
    [failed] = events("auth.login_failed")
    [login] = events("auth.login")
    assert failed.data == {"username": "op", "path": "/admin/login/"}
    assert failed.source_ip == "127.0.0.1"
    assert login.actor_label == "op" and login.data == {"path": "/admin/login/"}
    client.post("/admin/logout/")
    [logout] = events("auth.logout")
    assert logout.actor_label == "op"
