"""Operator MFA in a real browser (issue 12, item 5): Debian's chromium logs in with the
password, enrols by reading the secret from the page and computing the TOTP code here (as
an authenticator app would, with django_otp.oath), sees the recovery codes, logs out,
logs in again with a TOTP code, and once more with a recovery code.

The `page` fixture (conftest.py) fails the test on any console error or 4xx/5xx of the
app. OPERATOR_MFA_REQUIRED is off in the test settings; this test turns it on. The live
server runs in this process's thread, so override_settings reaches it."""

from __future__ import annotations

import re
import secrets
import time
from base64 import b32decode
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django_otp.oath import TOTP

from audit.models import AuditEvent
from config.tests.browser.conftest import screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Page
    from pytest_django.live_server_helper import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)


def app_code(key: bytes, *, after_step: int = -1) -> str:
    """What an authenticator app shows now; if the step `after_step` was already used
    (django-otp accepts each code once), wait for the next 30-second step."""
    totp = TOTP(key, step=30, digits=6)
    while totp.t() <= after_step:
        time.sleep(0.5)
        totp = TOTP(key, step=30, digits=6)
    return f"{totp.token():06d}"


def current_step(key: bytes) -> int:
    return int(TOTP(key, step=30, digits=6).t())


def password_login(page: Page, live_server: LiveServer, username: str, password: str) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label(re.compile("username", re.I)).fill(username)
    page.get_by_label(re.compile("password", re.I)).fill(password)
    page.get_by_role("button", name=re.compile("log ?in", re.I)).click()


def log_out(page: Page, live_server: LiveServer) -> None:
    # The console's own logout form (django-unfold's account menu): a POST with its CSRF token.
    page.locator("#logout-form").evaluate("form => form.submit()")
    page.wait_for_url(f"{live_server.url}/admin/logout/")
    assert "successfully logged out" in page.inner_text("body")


def test_it_enrols_then_logs_in_with_a_totp_code_and_with_a_recovery_code(
    page: Page, live_server: LiveServer, request: pytest.FixtureRequest
) -> None:
    password = secrets.token_urlsafe(16)
    user = get_user_model().objects.create_superuser(
        username="mfa-browser", password=password, email="mfa-browser@vendor.example"
    )
    with override_settings(OPERATOR_MFA_REQUIRED=True):
        # 1. Password, then the enrolment page: QR code and the secret in text.
        password_login(page, live_server, "mfa-browser", password)
        page.wait_for_url(re.compile(r"/admin/mfa/enrol/\?next="))
        assert page.locator("#mfa-qr svg").count() == 1
        secret = page.locator("#mfa-secret").get_attribute("data-secret") or ""
        assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret
        assert " ".join(secret[i : i + 4] for i in range(0, 32, 4)) == page.locator("#mfa-secret").inner_text()
        key = b32decode(secret)
        screenshot(page, request, "1-enrol")

        # 2. Confirm with the code the "app" computes: ten recovery codes, shown once.
        page.get_by_label("Code").fill(app_code(key))
        enrolled_at = current_step(key)
        page.get_by_role("button", name="Confirm and continue").click()
        page.wait_for_selector("#mfa-recovery-codes")
        codes = page.locator("[data-recovery-code]").evaluate_all("els => els.map(e => e.dataset.recoveryCode)")
        assert len(codes) == 10 and len(set(codes)) == 10
        assert "shown only this once" in page.inner_text("body")
        screenshot(page, request, "2-recovery-codes")
        page.get_by_role("link", name="Continue to the console").click()
        page.wait_for_url(f"{live_server.url}/admin/")
        assert "Billing console" in page.title()
        log_out(page, live_server)

        # 3. Again: password, then a TOTP code (the next step's: a code works once).
        password_login(page, live_server, "mfa-browser", password)
        page.wait_for_url(re.compile(r"/admin/mfa/verify/\?next="))
        screenshot(page, request, "3-verify")
        page.get_by_label("Code").fill(app_code(key, after_step=enrolled_at))
        page.get_by_role("button", name="Verify").click()
        page.wait_for_url(f"{live_server.url}/admin/")
        page.goto("/admin/billing/invoice/")
        assert page.url == f"{live_server.url}/admin/billing/invoice/"
        log_out(page, live_server)

        # 4. Once more with a recovery code instead.
        password_login(page, live_server, "mfa-browser", password)
        page.wait_for_url(re.compile(r"/admin/mfa/verify/"))
        page.get_by_label("Code").fill(codes[0])
        page.get_by_role("button", name="Verify").click()
        page.wait_for_url(f"{live_server.url}/admin/")
        assert "9 left" in page.inner_text("body")
        screenshot(page, request, "4-recovery-login")

    actions = list(
        AuditEvent.objects.filter(actor_id=str(user.pk), action__startswith="mfa.")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == [
        "mfa.device_enrolled",
        "mfa.device_confirmed",
        "mfa.recovery_codes_issued",
        "mfa.login_verified",
        "mfa.login_verified",
        "mfa.recovery_code_used",
        "mfa.login_verified",
    ]
