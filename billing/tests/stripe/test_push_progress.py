"""A billing run's push progress (issue 10, item 4: pushes are paced, so a run's invoices reach
Stripe over minutes; billing/stripe/selectors.py:run_push_progress): the invoices the run
finalized, by push state, and the push rate of the last minute."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from audit.services import audit_record
from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, PushState
from billing.services import invoice_create_one_off, patient_activate, subscription_create
from billing.stripe.selectors import run_invoices, run_push_progress
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan

pytestmark = pytest.mark.django_db
CHI = ZoneInfo("America/Chicago")
SUBSCRIBED = datetime(2026, 3, 10, 14, tzinfo=CHI)
RUN_AT = datetime(2026, 4, 10, 1, tzinfo=CHI)


def subscribed_office():
    office = OfficeFactory(timezone="America/Chicago")
    with at(SUBSCRIBED - timedelta(days=1)):
        patient_activate(patient=PatientFactory(office=office))
    with at(SUBSCRIBED):
        subscription_create(office=office, plan_code="professional")
    return office


def mark_pushed(invoice: Invoice, when: datetime) -> None:
    """What a push does on success: the state, and its `invoice.pushed` audit entry."""
    Invoice.objects.filter(pk=invoice.pk).update(push_state=PushState.PUSHED, stripe_invoice_id=f"in_{invoice.pk}")
    with at(when):
        audit_record(action="invoice.pushed", target=invoice, office_id=invoice.office_id, data={})


def test_it_counts_the_runs_invoices_by_push_state_and_the_last_minutes_rate():
    professional_plan()
    offices = [subscribed_office() for _ in range(4)]
    outsider = subscribed_office()  # billed by another run
    with at(RUN_AT):
        run = billing_run(office_ids=[o.pk for o in offices])
        one_off = invoice_create_one_off(office=offices[0], lines=[{"description": "Training", "amount_cents": 900}])
    with at(RUN_AT + timedelta(minutes=1)):
        billing_run(office_ids=[outsider.pk])

    invoices = list(run_invoices(run).order_by("office_id"))
    assert [i.office_id for i in invoices] == [o.pk for o in offices]
    assert all(i.kind == InvoiceKind.CYCLE for i in invoices)  # not the operator's one-off, not the setup fees
    assert one_off.pk not in {i.pk for i in invoices}
    assert run_push_progress(run, now=RUN_AT) == {"pending": 4, "pushed": 0, "failed": 0, "total": 4, "rate": 0.0}

    mark_pushed(invoices[0], RUN_AT + timedelta(seconds=10))  # more than a minute before `now`
    mark_pushed(invoices[1], RUN_AT + timedelta(seconds=80))
    mark_pushed(invoices[2], RUN_AT + timedelta(seconds=90))
    Invoice.objects.filter(pk=invoices[3].pk).update(push_state=PushState.FAILED)
    other = Invoice.objects.get(office=outsider, kind=InvoiceKind.CYCLE, finalized_at__isnull=False)
    mark_pushed(other, RUN_AT + timedelta(seconds=95))  # not the run's

    progress = run_push_progress(run, now=RUN_AT + timedelta(seconds=100))
    assert progress == {"pending": 0, "pushed": 3, "failed": 1, "total": 4, "rate": round(2 / 60, 2)}
