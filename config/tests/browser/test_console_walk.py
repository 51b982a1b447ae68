"""A first walk through the operator console in a real browser (issue 9).

An operator logs in through the login form and reads the pages of one billed office: the
index, the office (list and page), its invoices (list and page) and its patients. Each
page must load clean (no console error, no same-origin 4xx/5xx — the `page` fixture
checks) and must show patients only by billing reference, never their PHI.

Assertions hold to what a theme change keeps (URLs, titles, headings, the office's name,
the invoice numbers), not to markup: the console is being moved to django-unfold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from django.urls import reverse

from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceStatus
from billing.services import patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import localstripe_env
from config.tests.browser.conftest import login_as_operator, phi_found, screenshot
from offices.models import Office
from patients.models import Patient

if TYPE_CHECKING:
    from playwright.sync_api import Page
    from pytest_django.live_server_helper import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)  # the live server's thread reads what the test wrote

CHI = ZoneInfo("America/Chicago")

# Realistic, distinct PHI (the factories' defaults share one birth date and have no email or
# phone), so every form assert_no_phi looks for has something to find.
PATIENTS = [
    {"first_name": "Margaret", "last_name": "Okonkwo", "date_of_birth": date(1984, 7, 23),
     "mrn": "4417-20931", "email": "m.okonkwo@mail.example", "phone": "+1 (312) 555-0142"},
    {"first_name": "Dmitri", "last_name": "Halvorsen", "date_of_birth": date(1959, 11, 2),
     "mrn": "4417-20932", "email": "dhalvorsen@mail.example", "phone": "312-555-0177"},
    {"first_name": "Lucia", "last_name": "Fernandez-Whitlock", "date_of_birth": date(2001, 3, 14),
     "mrn": "4417-20933", "email": "lucia.fw@mail.example", "phone": "(773) 555 0199"},
]  # fmt: skip


def seed_billed_office() -> tuple[Office, list[Patient], list[Invoice]]:
    """billing/tests/support/stripe_helpers.billed_office's history (spec §11 example 1:
    subscribed 2026-03-10 to the professional plan, the first cycle finalized 2026-04-10 →
    a setup-fee invoice and a cycle invoice), with PHI-bearing patients created *before*
    billing, so anything billing copied from them would carry their real PHI."""
    professional_plan()
    office = OfficeFactory.create(name="Lakeshore Family Practice", timezone="America/Chicago")
    start = datetime(2026, 3, 10, 14, tzinfo=CHI)
    with at(start - timedelta(days=1)):
        patients = [patient_activate(patient=PatientFactory.create(office=office, **phi)) for phi in PATIENTS]
    with at(start):
        subscription_create(office=office, plan_code="professional")
    with at(datetime(2026, 4, 10, 1, tzinfo=CHI)):
        billing_run()
    invoices = list(Invoice.objects.filter(office=office).exclude(status=InvoiceStatus.DRAFT).order_by("id"))
    assert len(invoices) == 2 and all(invoice.number for invoice in invoices), invoices
    return office, patients, invoices


@pytest.fixture
def stripe_env(settings: Any) -> Iterator[str]:
    """A localstripe of the test's own: recording a payment outside Stripe tells Stripe."""
    with run_localstripe() as url, localstripe_env(settings, url):
        yield url


def test_it_walks_the_console_without_errors_or_phi(
    page: Page, live_server: LiveServer, request: pytest.FixtureRequest, stripe_env: str
) -> None:
    office, patients, invoices = seed_billed_office()
    login_as_operator(page, live_server)
    leaks: dict[str, list[str]] = {}

    def visit(url: str, *, title: str, step: str) -> str:
        """Open `url`, check it is the page asked for, and return its visible text."""
        response = page.goto(url)
        assert response is not None and response.status == 200, (url, response and response.status)
        assert page.url == f"{live_server.url}{url}", "redirected away (to the login page?)"
        assert re.search(title, page.title(), re.IGNORECASE), (url, page.title())
        assert "Billing console" in page.title(), page.title()
        text = page.inner_text("body")
        screenshot(page, request, step)
        found = phi_found(text, patients)
        if found:
            leaks[url] = found
        return text

    # The index: the console's overview, with a way to reach offices and invoices.
    text = visit(reverse("admin:index"), title=r"overview|site administration|dashboard", step="1-index")
    assert page.get_by_role("link", name=re.compile(r"\boffices\s*$", re.I)).count() >= 1, "no link to offices"
    assert page.get_by_role("link", name=re.compile(r"\binvoices\s*$", re.I)).count() >= 1, "no link to invoices"
    # (The sidebar's link names start with their icon's ligature, "apartment Offices".)
    # The overview's figures are the seeded history's: both invoices still open today,
    # 50000 + 15000 cents; and April 2026 billed the first cycle, 15000 (the setup fee
    # was finalized in March).
    assert page.locator('[data-figure="Outstanding"]').inner_text() == "$650.00 USD"
    page.get_by_label("Month", exact=True).fill("2026-04")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"month=2026-04"))
    assert page.locator('[data-figure="Billed"]').inner_text() == "$150.00 USD"
    assert "April 2026" in page.inner_text("body")
    screenshot(page, request, "1b-overview-april")

    # Offices: listed by name; the name leads to the office's page.
    text = visit(reverse("admin:offices_office_changelist"), title=r"office", step="2-offices")
    assert office.name in text
    page.get_by_role("link", name=office.name, exact=True).first.click()
    page.wait_for_url(f"{live_server.url}{reverse('admin:offices_office_change', args=[office.pk])}")
    text = visit(reverse("admin:offices_office_change", args=[office.pk]), title=r"office", step="3-office")
    assert office.name in text

    # Invoices: both numbers listed; a number leads to the invoice's page.
    text = visit(reverse("admin:billing_invoice_changelist"), title=r"invoice", step="4-invoices")
    for invoice in invoices:
        assert str(invoice.number) in text, invoice.number
    cycle = next(invoice for invoice in invoices if not invoice.is_setup_fee)
    page.get_by_role("link", name=str(cycle.number), exact=True).first.click()
    page.wait_for_url(f"{live_server.url}{reverse('admin:billing_invoice_change', args=[cycle.pk])}")
    text = visit(reverse("admin:billing_invoice_change", args=[cycle.pk]), title=r"invoice", step="5-invoice")
    assert str(cycle.number) in text and office.name in text

    # Void with a reason: the action asks for confirmation and a reason first.
    page.goto(f"{live_server.url}{reverse('admin:billing_invoice_changelist')}")
    page.locator(f'input[name="_selected_action"][value="{cycle.pk}"]').check()
    page.locator('select[name="action"]').select_option("void_invoices")
    page.locator('button[name="index"]').click()
    page.wait_for_selector('textarea[name="reason"]')
    screenshot(page, request, "5b-void-confirm")
    assert Invoice.objects.get(pk=cycle.pk).status == InvoiceStatus.OPEN  # only asked, not done
    page.locator('textarea[name="reason"]').fill("Entered twice by mistake")
    page.get_by_role("button", name=re.compile(r"^Void 1 invoice")).click()
    page.wait_for_selector(f"text=Voided 1 invoice(s): {cycle.number}")
    screenshot(page, request, "5c-voided")
    voided = Invoice.objects.get(pk=cycle.pk)
    assert voided.status == InvoiceStatus.VOID

    # Record a payment outside Stripe with its reference, from the setup-fee invoice's page.
    setup_fee = next(invoice for invoice in invoices if invoice.is_setup_fee)
    visit(reverse("admin:billing_invoice_change", args=[setup_fee.pk]), title=r"invoice", step="5d-setup-fee")
    page.get_by_role("link", name=re.compile("Record payment")).click()
    page.wait_for_selector('input[name="reference"]')
    screenshot(page, request, "5e-record-payment")
    page.locator('select[name="method"]').select_option("cheque")
    page.locator('input[name="reference"]').fill("Cheque 004512")
    page.locator('input[name="received_on"]').fill("2026-04-12")
    page.locator('input[name="amount"]').fill("500.00")
    page.get_by_role("button", name="Record payment").click()
    page.wait_for_url(f"{live_server.url}{reverse('admin:billing_invoice_change', args=[setup_fee.pk])}")
    paid = Invoice.objects.get(pk=setup_fee.pk)
    assert paid.status == InvoiceStatus.PAID and "004512" in paid.payment_note
    screenshot(page, request, "5f-recorded")

    # Next month's invoices today: the office's "Preview billing", at the next boundary.
    visit(reverse("admin:offices_office_change", args=[office.pk]), title=r"office", step="7-office-hub")
    page.get_by_role("link", name=re.compile("Preview billing")).click()
    page.get_by_role("button", name="Next boundary").click()
    page.wait_for_selector("text=the next boundary")
    preview = page.inner_text("body")
    assert "nothing was saved" in preview and "$150.00 USD" in preview  # May's period at the minimum
    screenshot(page, request, "7b-preview-next-boundary")

    # Exports: the invoices of the list as CSV (the action), then the aging report.
    page.goto(f"{live_server.url}{reverse('admin:billing_invoice_changelist')}")
    page.locator("input#action-toggle").check()
    page.locator('select[name="action"]').select_option("export_csv")
    with page.expect_download() as download:
        page.locator('button[name="index"]').click()
    invoices_csv = open(download.value.path(), encoding="utf-8").read()  # noqa: SIM115
    assert all(str(invoice.number) in invoices_csv for invoice in invoices)

    # The audit trail: every entry of the list ("select all"), as CSV.
    page.goto(f"{live_server.url}{reverse('admin:audit_auditevent_changelist')}")
    page.locator("input#action-toggle").check()
    page.locator('select[name="action"]').select_option("export_csv")
    with page.expect_download() as download:
        page.locator('button[name="index"]').click()
    audit_csv = open(download.value.path(), encoding="utf-8").read()  # noqa: SIM115
    assert audit_csv.splitlines()[0].startswith("id,ts,actor_type,") and "invoice.voided" in audit_csv
    assert not phi_found(audit_csv, patients)

    # The aging report from the overview's link, as the logged-in operator.
    page.goto(f"{live_server.url}{reverse('admin:index')}")
    href = page.get_by_role("link", name=re.compile("Download every office")).get_attribute("href")
    csv_answer = page.request.get(f"{live_server.url}{href}")
    assert csv_answer.status == 200 and csv_answer.headers["content-type"].startswith("text/csv")
    assert csv_answer.text().splitlines()[0] == "bucket,currency,office_id,office,amount_cents,amount"

    # Patients: present, but only by billing reference.
    text = visit(reverse("admin:patients_patient_changelist"), title=r"patient", step="6-patients")
    for patient in patients:
        assert patient.billing_ref in text, patient.billing_ref

    assert not leaks, "PHI on console pages: " + "; ".join(f"{url}: {', '.join(f)}" for url, f in leaks.items())


def test_it_lets_a_test_declare_the_404_it_provokes(
    page: Page, live_server: LiveServer, expect_status: Callable[..., None]
) -> None:
    """The page fixture fails on any same-origin 4xx unless the test declares it."""
    login_as_operator(page, live_server)
    expect_status(404)
    response = page.goto("/admin/no-such-console-page/")
    assert response is not None and response.status == 404
