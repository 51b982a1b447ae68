"""Operator MFA (issue 12, item 5; HIPAA 164.312(d) person or entity authentication):
enrolment on first login, a code at every later login, single-use recovery codes stored
hashed, throttled wrong codes, enforcement on every console page, the API untouched, the
superuser's reset, and the audit entries of each — never a code or a secret in them.

The test settings turn OPERATOR_MFA_REQUIRED off (so the suite's ~1,100 tests that
force_login operators keep working); every test here turns it on with override_settings.
The password step is the real /admin/login/ form where it matters, force_login elsewhere:
the second factor does not depend on how the password session began."""

from __future__ import annotations

import json
import re
from base64 import b32decode
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.test import Client, override_settings
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from knox.models import AuthToken

from audit.models import AuditEvent
from billing.tests.support.factories import at
from config.errors import ApplicationError, PermissionDeniedError
from config.mfa.services import mfa_reset

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("mfa_on")]

T0 = datetime(2026, 3, 10, 15, 0, 0, tzinfo=UTC)
PASSWORD = "correct horse battery staple 7"
ENROL = "/admin/mfa/enrol/"
VERIFY = "/admin/mfa/verify/"


@pytest.fixture
def mfa_on() -> Any:
    with override_settings(OPERATOR_MFA_REQUIRED=True):
        yield


@pytest.fixture(autouse=True)
def fresh_throttles(db: None) -> None:
    cache.clear()


@pytest.fixture
def operator() -> Any:
    return get_user_model().objects.create_user(
        username="op", password=PASSWORD, is_staff=True, is_superuser=True, email="op@vendor.example"
    )


def password_login(client: Client, username: str = "op", next_url: str = "/admin/") -> Any:
    """The console's real login form (the password step)."""
    response = client.post(
        f"/admin/login/?next={next_url}", {"username": username, "password": PASSWORD, "next": next_url}
    )
    assert response.status_code == 302, response.content[:500]
    return response


def secret_on(page: str) -> bytes:
    """The authenticator secret as the enrolment page shows it in text (base32)."""
    match = re.search(r'data-secret="([A-Z2-7]+)"', page)
    assert match, "no secret on the enrolment page"
    return b32decode(match.group(1))


def code(key: bytes, *, when: datetime) -> str:
    """The six-digit TOTP code an authenticator app shows at `when` (RFC 6238, 30 s steps)."""
    with at(when):
        return f"{totp(key):06d}"


def enrol(client: Client, *, when: datetime = T0) -> tuple[bytes, list[str]]:
    """Enrol through the pages: the secret read from the page, the recovery codes from the answer."""
    with at(when):
        page = client.get(ENROL).content.decode()
        key = secret_on(page)
        answer = client.post(ENROL, {"code": code(key, when=when), "next": "/admin/"})
    assert answer.status_code == 200, answer.content[:800]
    codes = re.findall(r'data-recovery-code="([a-z2-7]{5}-[a-z2-7]{5})"', answer.content.decode())
    return key, codes


def actions(user: Any) -> list[str]:
    return list(
        AuditEvent.objects.filter(actor_id=str(user.pk), action__startswith="mfa.")
        .values_list("action", flat=True)
        .order_by("pk")
    )


# --- enrolment ----------------------------------------------------------------------------


def test_it_sends_an_operator_without_an_authenticator_from_any_console_page_to_enrolment(
    client: Client, operator: Any
) -> None:
    with at(T0):
        response = password_login(client, next_url="/admin/billing/invoice/")
        assert response["Location"] == "/admin/billing/invoice/"
        for url in ("/admin/", "/admin/billing/invoice/", "/admin/auth/user/", "/admin/password_change/"):
            answer = client.get(url)
            assert answer.status_code == 302, url
            assert answer["Location"].startswith(ENROL + "?next="), (url, answer["Location"])
        assert client.get("/admin/billing/invoice/")["Location"] == ENROL + "?next=%2Fadmin%2Fbilling%2Finvoice%2F"


def test_it_enrols_with_a_code_from_the_shown_secret_and_shows_ten_recovery_codes_once(
    client: Client, operator: Any
) -> None:
    with at(T0):
        password_login(client)
        page = client.get(ENROL)
    html = page.content.decode()
    assert page.status_code == 200 and "Set up two-factor authentication" in html
    assert "<svg" in html and 'id="mfa-qr"' in html  # the QR code, inline
    assert not re.search(r'(src|href)="https?://', html), "the enrolment page loads something from elsewhere"
    assert 'name="code"' in html and "Log out" in html
    key = secret_on(html)
    assert TOTPDevice.objects.get(user=operator).bin_key == key and not TOTPDevice.objects.get(user=operator).confirmed
    with at(T0):
        again = client.get(ENROL).content.decode()
    assert secret_on(again) == key, "a reload must show the same secret, not a new device"

    with at(T0 + timedelta(seconds=5)):
        answer = client.post(ENROL, {"code": code(key, when=T0 + timedelta(seconds=5)), "next": "/admin/"})
        assert answer.status_code == 200
        assert "no-store" in answer["Cache-Control"]
        codes = re.findall(r'data-recovery-code="([a-z2-7]{5}-[a-z2-7]{5})"', answer.content.decode())
        assert len(codes) == 10 and len(set(codes)) == 10
        assert "shown only this once" in answer.content.decode()
        # Verified: the console opens.
        assert client.get("/admin/").status_code == 200
        # Shown once: nothing shows them again (the enrolment page now leads to the console).
        assert client.get(ENROL)["Location"] == "/admin/"
    assert TOTPDevice.objects.get(user=operator).confirmed
    # Stored hashed: no stored token is a code, with or without its dash.
    stored = set(StaticToken.objects.filter(device__user=operator).values_list("token", flat=True))
    assert len(stored) == 10
    assert not stored & (set(codes) | {c.replace("-", "") for c in codes})
    assert actions(operator) == [
        "mfa.device_enrolled",
        "mfa.device_confirmed",
        "mfa.recovery_codes_issued",
        "mfa.login_verified",
    ]


def test_it_refuses_a_wrong_enrolment_code_and_audits_it_without_the_code(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
        key = secret_on(client.get(ENROL).content.decode())
        wrong = f"{(int(code(key, when=T0)) + 1) % 1_000_000:06d}"
        answer = client.post(ENROL, {"code": wrong})
    assert answer.status_code == 400
    assert "That code is not right" in answer.content.decode()
    assert not TOTPDevice.objects.get(user=operator).confirmed
    assert not StaticDevice.objects.filter(user=operator).exists()
    failed = AuditEvent.objects.get(action="mfa.code_failed")
    assert failed.outcome == "failure" and failed.actor_id == str(operator.pk)
    assert failed.data == {"method": "totp", "stage": "enrolment", "throttled": False, "failure_count": 1}
    assert wrong not in json.dumps(failed.data) + failed.reason


# --- every later login --------------------------------------------------------------------


def test_it_asks_an_enrolled_operator_for_a_code_at_each_login(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    key, _ = enrol(client)
    later = T0 + timedelta(minutes=5)
    fresh = Client()
    with at(later):
        response = password_login(fresh, next_url="/admin/offices/office/")
        answer = fresh.get(response["Location"])
        assert answer.status_code == 302 and answer["Location"].startswith(VERIFY + "?next=")
        page = fresh.get(answer["Location"])
        assert page.status_code == 200 and "Two-factor authentication" in page.content.decode()
        verified = fresh.post(VERIFY, {"code": code(key, when=later), "next": "/admin/offices/office/"})
        assert verified.status_code == 302 and verified["Location"] == "/admin/offices/office/"
        assert fresh.get("/admin/offices/office/").status_code == 200
    assert actions(operator)[-1] == "mfa.login_verified"
    assert AuditEvent.objects.filter(action="mfa.login_verified").last().data == {"method": "totp", "stage": "login"}  # type: ignore[union-attr]


def test_it_refuses_a_totp_code_used_once_already(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    key, _ = enrol(client)
    later = T0 + timedelta(minutes=1)
    first, second = Client(), Client()
    with at(later):
        password_login(first)
        assert first.post(VERIFY, {"code": code(key, when=later)}).status_code == 302
        password_login(second)
        refused = second.post(VERIFY, {"code": code(key, when=later)})
    assert refused.status_code == 400 and "already used" in refused.content.decode()


def test_it_throttles_wrong_codes_and_audits_the_throttled_tries(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    key, _ = enrol(client)
    fresh = Client()
    t = T0 + timedelta(minutes=10)
    with at(t):
        password_login(fresh)
        wrong = f"{(int(code(key, when=t)) + 7) % 1_000_000:06d}"
        assert fresh.post(VERIFY, {"code": wrong}).status_code == 400  # 1st failure: 1 s to wait
        throttled = fresh.post(VERIFY, {"code": code(key, when=t)})  # the right code, too soon
        assert fresh.get("/admin/")["Location"].startswith(VERIFY)
    assert throttled.status_code == 400
    assert "Too many wrong codes. Try again in 1 second." in throttled.content.decode()
    with at(t + timedelta(seconds=1)):
        assert fresh.post(VERIFY, {"code": wrong}).status_code == 400  # 2nd failure: 2 s
    with at(t + timedelta(seconds=2)):
        assert "Try again in 1 second." in fresh.post(VERIFY, {"code": code(key, when=t)}).content.decode()
    with at(t + timedelta(seconds=3)):
        assert fresh.post(VERIFY, {"code": code(key, when=t + timedelta(seconds=3))}).status_code == 302
        assert fresh.get("/admin/").status_code == 200
    failures = list(AuditEvent.objects.filter(action="mfa.code_failed").order_by("pk"))
    assert [(e.outcome, e.data["throttled"], e.data["failure_count"]) for e in failures] == [
        ("failure", False, 1),
        ("denied", True, 1),
        ("failure", False, 2),
        ("denied", True, 2),
    ]
    assert TOTPDevice.objects.get(user=operator).throttling_failure_count == 0  # reset by the good code


def test_it_accepts_each_recovery_code_once(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    _, codes = enrol(client)
    first, second = Client(), Client()
    with at(T0 + timedelta(hours=1)):
        password_login(first)
        used = first.post(VERIFY, {"code": codes[3].upper().replace("-", " "), "next": "/admin/"}, follow=True)
        assert used.status_code == 200 and used.redirect_chain[-1][0] == "/admin/"
        assert "recovery code; 9 left" in used.content.decode()
    with at(T0 + timedelta(hours=2)):
        password_login(second)
        again = second.post(VERIFY, {"code": codes[3]})
    assert again.status_code == 400 and "unused recovery code" in again.content.decode()
    assert StaticToken.objects.filter(device__user=operator).count() == 9
    used_entry = AuditEvent.objects.get(action="mfa.recovery_code_used")
    assert used_entry.data == {"codes_left": 9}
    assert AuditEvent.objects.filter(action="mfa.code_failed").last().data["method"] == "recovery"  # type: ignore[union-attr]


def test_it_lets_a_verified_operator_replace_the_recovery_codes(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    _, old = enrol(client)
    with at(T0 + timedelta(minutes=1)):
        assert "10</strong> unused" in client.get("/admin/mfa/recovery-codes/").content.decode()
        answer = client.post("/admin/mfa/recovery-codes/")
    new = re.findall(r'data-recovery-code="([a-z2-7]{5}-[a-z2-7]{5})"', answer.content.decode())
    assert len(new) == 10 and not set(new) & set(old)
    fresh = Client()
    with at(T0 + timedelta(minutes=2)):
        password_login(fresh)
        assert fresh.post(VERIFY, {"code": old[0]}).status_code == 400
    with at(T0 + timedelta(minutes=3)):
        assert fresh.post(VERIFY, {"code": new[0]}).status_code == 302


# --- enforcement and what it leaves alone -------------------------------------------------


def test_it_leaves_the_login_logout_and_mfa_pages_open_and_the_api_unaffected(client: Client, operator: Any) -> None:
    with at(T0):
        assert client.get("/admin/login/").status_code == 200
        password_login(client)
        assert client.get(ENROL).status_code == 200
        assert client.get(VERIFY)["Location"].startswith(ENROL)  # nothing to verify with yet
        # The API: a knox token of the same (unverified) staff user works as before.
        token = AuthToken.objects.create(user=operator)[1]
        api = Client().get("/api/v1/offices/", HTTP_AUTHORIZATION=f"Token {token}")
        assert api.status_code == 200
        logout = client.post("/admin/logout/")
        assert logout.status_code == 200
        assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_it_does_not_ask_when_operator_mfa_is_off(client: Client, operator: Any) -> None:
    with at(T0), override_settings(OPERATOR_MFA_REQUIRED=False):
        password_login(client)
        assert client.get("/admin/").status_code == 200


def test_it_sends_non_staff_to_the_login_page_not_to_enrolment(client: Client) -> None:
    get_user_model().objects.create_user(username="member", password=PASSWORD)
    client.login(username="member", password=PASSWORD)
    assert client.get("/admin/")["Location"].startswith("/admin/login/")
    assert client.get(ENROL)["Location"].startswith("/admin/login/")
    assert not TOTPDevice.objects.exists()


def test_it_only_follows_next_to_console_pages(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    key, _ = enrol(client)
    fresh = Client()
    later = T0 + timedelta(minutes=1)
    with at(later):
        password_login(fresh)
        answer = fresh.post(VERIFY + "?next=https://evil.example/admin/", {"code": code(key, when=later)})
    assert answer["Location"] == "/admin/"


def test_it_hides_django_otps_own_device_pages(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    enrol(client)
    with at(T0 + timedelta(seconds=40)):
        assert client.get("/admin/otp_totp/totpdevice/").status_code == 404
        assert client.get("/admin/otp_static/staticdevice/").status_code == 404


# --- reset by another operator ------------------------------------------------------------


def test_it_lets_a_superuser_reset_another_operators_mfa_with_a_reason(client: Client, operator: Any) -> None:
    other = get_user_model().objects.create_user(username="lost-phone", password=PASSWORD, is_staff=True)
    other_client = Client()
    with at(T0):
        password_login(other_client, username="lost-phone")
    enrol(other_client)
    with at(T0):
        password_login(client)
    enrol(client, when=T0 + timedelta(seconds=1))
    with at(T0 + timedelta(minutes=1)):
        changelist = client.get("/admin/auth/user/").content.decode()
        assert "mfa_reset" in changelist  # the action is offered to a superuser
        asked = client.post("/admin/auth/user/", {"action": "mfa_reset", "_selected_action": [str(other.pk)]})
        assert asked.status_code == 200 and "Reset MFA of 1 operator(s)" in asked.content.decode()
        no_reason = client.post(
            "/admin/auth/user/",
            {"action": "mfa_reset", "_selected_action": [str(other.pk)], "apply": "1", "reason": "  "},
        )
        assert no_reason.status_code == 200 and "This field is required" in no_reason.content.decode()
        assert TOTPDevice.objects.filter(user=other).exists()
        done = client.post(
            "/admin/auth/user/",
            {
                "action": "mfa_reset",
                "_selected_action": [str(other.pk)],
                "apply": "1",
                "reason": "Lost phone, ticket 42",
            },
            follow=True,
        )
        assert "MFA reset for 1 operator(s): lost-phone" in done.content.decode()
        # The other operator's verified session ends at once: the next page asks to enrol.
        assert other_client.get("/admin/")["Location"].startswith(ENROL)
    assert not TOTPDevice.objects.filter(user=other).exists() and not StaticDevice.objects.filter(user=other).exists()
    entry = AuditEvent.objects.get(action="mfa.reset")
    assert entry.actor_id == str(operator.pk) and entry.target_id == str(other.pk)
    assert entry.reason == "Lost phone, ticket 42"
    assert entry.data == {"username": "lost-phone", "devices_removed": {"totp": 1, "recovery": 1}}


def test_it_offers_the_reset_only_to_superusers_and_never_on_oneself(client: Client, operator: Any) -> None:
    staff = get_user_model().objects.create_user(username="staff", password=PASSWORD, is_staff=True)
    with pytest.raises(PermissionDeniedError):
        mfa_reset(user=operator, actor=staff, reason="no")
    with pytest.raises(PermissionDeniedError):
        mfa_reset(user=operator, actor=operator, reason="mine")
    with pytest.raises(ApplicationError):
        mfa_reset(user=staff, actor=operator, reason=" ")
    assert not AuditEvent.objects.filter(action="mfa.reset").exists()


def test_it_never_writes_a_code_or_a_secret_to_the_audit_trail(client: Client, operator: Any) -> None:
    with at(T0):
        password_login(client)
    key, codes = enrol(client)
    fresh = Client()
    with at(T0 + timedelta(minutes=1)):
        password_login(fresh)
        fresh.post(VERIFY, {"code": "123456"})
    with at(T0 + timedelta(minutes=2)):
        fresh.post(VERIFY, {"code": codes[0]})
    dump = json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder).lower()
    secrets_seen = [key.hex(), *(c for c in codes), *(c.replace("-", "") for c in codes), "123456"]
    secrets_seen += list(StaticToken.objects.values_list("token", flat=True))
    assert not [s for s in secrets_seen if s.lower() in dump]
