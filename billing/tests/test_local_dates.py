"""Dates people read are the office's local dates (spec §2; issue 8, defect 5): Stripe item
descriptions, the invoice PDF and the run summary used to print UTC dates, a day early for
offices east of UTC."""

from __future__ import annotations

import io
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from pypdf import PdfReader

from billing.dates import local_minute, local_period
from billing.documents import invoice_pdf
from billing.models import Invoice, InvoiceKind, InvoiceStatus
from billing.services import patient_activate, subscription_create
from billing.stripe.push import stripe_items
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan

pytestmark = pytest.mark.django_db
TOKYO = ZoneInfo("Asia/Tokyo")


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)


@pytest.fixture
def finalized_in_tokyo() -> tuple[Invoice, str]:
    professional_plan()
    office = OfficeFactory(name="Shibuya Clinic", timezone="Asia/Tokyo")
    with at(tokyo(2026, 3, 1, 9)):
        patient_activate(patient=PatientFactory(office=office))
    with at(tokyo(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="professional")
    out = io.StringIO()
    # 2026-04-10 01:00 in Tokyo is still 2026-04-09 in UTC.
    with at(tokyo(2026, 4, 10, 1)):
        call_command("run_billing_cycle", stdout=out, stderr=io.StringIO(), no_progress=True)
    invoice = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    return invoice, out.getvalue()


def test_it_formats_instants_in_the_offices_zone() -> None:
    end = tokyo(2026, 4, 10)
    assert local_period(tokyo(2026, 3, 10, 14), end, "Asia/Tokyo") == "2026-03-10 to 2026-04-10"
    assert local_minute(end, "Asia/Tokyo") == "2026-04-10 00:00+09:00"
    assert local_minute(end, "America/St_Johns") == "2026-04-09 12:30-02:30"


def test_it_sends_stripe_the_local_period(finalized_in_tokyo: tuple[Invoice, str]) -> None:
    invoice, _ = finalized_in_tokyo
    described = [item.description for item in stripe_items(invoice)]
    assert described[0] == "Active patients, 2026-03-10 to 2026-04-10", described


def test_it_prints_local_dates_on_the_pdf(finalized_in_tokyo: tuple[Invoice, str]) -> None:
    invoice, _ = finalized_in_tokyo
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(invoice_pdf(invoice))).pages)
    assert "2026-03-10 14:00+09:00 to 2026-04-10 00:00+09:00 (Asia/Tokyo)" in text
    assert "Issued 2026-04-10" in text and "(UTC)" not in text


def test_it_prints_local_dates_in_the_run_summary(finalized_in_tokyo: tuple[Invoice, str]) -> None:
    _, output = finalized_in_tokyo
    assert "2026-03-10..2026-04-10" in output, output


def test_the_pdf_summarises_each_group_lists_the_patients_in_an_appendix_and_numbers_its_pages(
    finalized_in_tokyo: tuple[Invoice, str],
) -> None:
    """Issue 9, item 8: a summary line per group as Stripe sees it, the amount due with its
    due date, how to pay, the patients by billing reference after the summary, page numbers."""
    invoice, _ = finalized_in_tokyo
    pages = [page.extract_text() for page in PdfReader(io.BytesIO(invoice_pdf(invoice))).pages]
    first, rest = " ".join(pages[0].split()), " ".join(" ".join(pages[1:]).split())
    refs = list(invoice.lines.exclude(patient_ref="").values_list("patient_ref", flat=True))
    assert refs and all(ref not in first for ref in refs)  # the summary page names no patient
    assert all(ref in rest for ref in refs) and "Appendix: patients billed" in rest
    assert f"Active patients: {len(refs)} × 4.50 USD" in first
    total = f"{invoice.total_cents // 100:,}.{invoice.total_cents % 100:02d} USD"
    assert f"Amount due: {total} by" in first and "How to pay:" in first
    assert f"Page 1 of {len(pages)}" in first and len(pages) >= 2
