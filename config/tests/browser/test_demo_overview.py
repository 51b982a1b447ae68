"""The demo in a real browser (issue 9, item 9): seed_demo's history against a real
localstripe, the demo admin logs in with the password seed_demo printed, opens the overview
of the last full month, and the page shows what the seeded rows add up to (by hand, in
billing/tests/test_seed_demo.py), in major units with the currency; and no PHI."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from django.urls import reverse

from billing.money import format_cents
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import localstripe_env
from billing.tests.test_seed_demo import last_full_month_by_hand, printed_passwords, seed
from config.tests.browser.conftest import phi_found, screenshot
from patients.models import Patient

if TYPE_CHECKING:
    from playwright.sync_api import Page
    from pytest_django.live_server_helper import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)  # the live server's thread reads what seed_demo wrote


def test_it_shows_the_seeded_history_on_the_overview_of_the_last_full_month(
    page: Page, live_server: LiveServer, request: pytest.FixtureRequest, settings
) -> None:
    with run_localstripe() as url, localstripe_env(settings, url):
        output, _seconds = seed()
    password = printed_passwords(output)["admin"]
    hand = last_full_month_by_hand()

    page.goto("/admin/login/?next=/admin/")
    page.get_by_label(re.compile("username", re.I)).fill("admin")
    page.get_by_label(re.compile("password", re.I)).fill(password)
    page.get_by_role("button", name=re.compile(r"log ?in|sign ?in", re.I)).click()
    page.wait_for_url(f"{live_server.url}/admin/")
    page.get_by_label("Month", exact=True).fill(f"{hand.month:%Y-%m}")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(rf"month={hand.month:%Y-%m}"))
    screenshot(page, request, "overview-last-full-month")

    def figure(label: str) -> str:
        return page.locator(f'[data-figure="{label}"]').inner_text()

    assert f"{hand.month:%B %Y}" in page.inner_text("body")
    assert figure("Billed") == format_cents(hand.billed, "usd")
    assert figure("Collected") == format_cents(hand.collected, "usd")
    assert figure("Outstanding") == format_cents(hand.outstanding, "usd")
    assert figure("Past due") == format_cents(hand.past_due, "usd")
    assert figure("MRR") == format_cents(hand.mrr, "usd")
    assert figure("Active patients") == f"{hand.active:,}"
    assert figure("Billable patients") == f"{hand.billable:,}"
    assert re.fullmatch(r"\$[\d,]+\.\d\d USD", figure("Billed"))  # major units, with the currency

    # What needs an operator now: the suspended office and its declined payment.
    text = page.inner_text("body")
    assert "Demo Denver Clinic" in text
    assert page.get_by_role("link", name="Demo Denver Clinic").first.get_attribute("href", timeout=5000)
    assert not phi_found(text, Patient.objects.all())
    assert page.url.startswith(f"{live_server.url}{reverse('admin:index')}")
