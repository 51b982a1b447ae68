"""The spec's worked examples (§11), end to end through the services and the run."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus, LineKind
from billing.services import patient_activate, patient_deactivate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan

pytestmark = pytest.mark.django_db
CHI = ZoneInfo("America/Chicago")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


def test_it_bills_example_1_setup_fee_activation_line_and_minimum():
    professional_plan()
    office = OfficeFactory(timezone="America/Chicago")
    a, b, c, d = (PatientFactory(office=office) for _ in range(4))
    with at(local(2026, 3, 1, 9)):
        for p in (a, b, c):
            patient_activate(patient=p)
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="professional")

    setup = Invoice.objects.get(office=office, kind=InvoiceKind.ONE_OFF)
    assert setup.status == InvoiceStatus.OPEN and setup.total_cents == 50000 and setup.number
    assert [line.kind for line in setup.lines.all()] == [LineKind.SETUP_FEE]

    draft = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE)
    assert draft.status == InvoiceStatus.DRAFT
    assert draft.period_start == local(2026, 3, 10, 14) and draft.period_end == local(2026, 4, 10)
    assert sorted(line.kind for line in draft.lines.all()) == ["recurring"] * 3
    assert draft.subtotal_cents == 1350

    with at(local(2026, 3, 20, 10)):
        patient_activate(patient=d)
    with at(local(2026, 3, 25, 10)):
        patient_deactivate(patient=a)
    with at(local(2026, 3, 28, 10)):
        patient_activate(patient=a)
    draft.refresh_from_db()
    assert draft.lines.count() == 4 and draft.subtotal_cents == 1800
    assert draft.lines.get(patient=d).kind == LineKind.ACTIVATION

    with at(local(2026, 4, 10, 0, 5)):
        billing_run()
    draft.refresh_from_db()
    assert draft.status == InvoiceStatus.OPEN
    assert draft.total_cents == 15000
    adj = draft.lines.get(kind=LineKind.MINIMUM_ADJUSTMENT)
    assert adj.amount_cents == 13200
    nxt = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
    assert nxt.period_start == local(2026, 4, 10) and nxt.period_end == local(2026, 5, 10)
    assert sorted(line.kind for line in nxt.lines.all()) == ["recurring"] * 4


def test_it_clamps_anchor_31_to_month_ends():
    professional_plan(minimum_cents=0, setup_fee_cents=0)
    office = OfficeFactory(timezone="UTC")
    utc = ZoneInfo("UTC")
    with at(datetime(2026, 1, 31, 12, tzinfo=utc)):
        subscription_create(office=office, plan_code="professional")
    assert office.__class__.objects.get(pk=office.pk).billing_cycle_anchor_date == date(2026, 1, 31)
    with at(datetime(2026, 5, 1, tzinfo=utc)):
        billing_run()
    starts = list(
        Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE)
        .order_by("period_start")
        .values_list("period_start", flat=True)
    )
    assert [s.date() for s in starts] == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)]
