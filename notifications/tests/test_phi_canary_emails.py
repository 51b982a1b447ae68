"""PHI canary for the emails (the sibling of config/tests/test_phi_canary.py, spec §9 and
§12): a patient with unmistakable values is billed through a whole history — invoices
issued, a declined card in localstripe (payment failed, signed webhooks), the suspension
warning, suspension, recovery, a credit note through the hook — and none of the canary's
values may appear in any email that reached the SMTP server (headers, text, HTML, the
attached PDFs), in the stored emails, in the audit entries about them, or in the logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from audit.models import AuditEvent
from billing.dunning import dunning_run
from billing.engine.run import billing_run
from billing.models import Invoice
from billing.services import invoice_create_one_off, patient_activate, subscription_create
from billing.stripe.gateway import Gateway, client
from billing.tests.support.factories import OfficeFactory, at, professional_plan
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import (
    deliver,
    events_of,
    finalized,
    localstripe_env,
    push_all,
    stripe_post,
    wait_for,
    with_card,
)
from config.tests.test_phi_canary import CANARY, leaks
from notifications.models import EmailKind, OutboundEmail
from notifications.services import notifications_dispatch, notify_credit_note_issued
from notifications.tests.support import everything_of, pdfs_of
from patients.services import patient_create

pytestmark = pytest.mark.django_db(transaction=True)
CHI = ZoneInfo("America/Chicago")
GRACE = timedelta(days=14)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


def test_it_keeps_canary_phi_out_of_every_email_and_its_audit_entries(settings, stripe_url, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    with localstripe_env(settings, stripe_url):
        url = stripe_url
        professional_plan()
        office = OfficeFactory(
            name="Canary Clinic", timezone="America/Chicago", billing_email="billing@canary-clinic.example"
        )
        with at(datetime(2026, 3, 5, 9, tzinfo=CHI)):
            canary = patient_create(
                office=office, **{**CANARY, "date_of_birth": date.fromisoformat(CANARY["date_of_birth"])}
            )
            plain = patient_create(
                office=office, first_name="Plain", last_name="Person", date_of_birth=date(1980, 6, 7), mrn="MRN-PLAIN-1"
            )
            patient_activate(patient=canary)
            patient_activate(patient=plain)
        with at(datetime(2026, 3, 10, 14, tzinfo=CHI)):
            subscription_create(office=office, plan_code="professional")
        with at(datetime(2026, 4, 10, 1, tzinfo=CHI)):
            billing_run()
        with at(datetime(2026, 4, 10, 2, tzinfo=CHI)):
            invoice_create_one_off(office=office, lines=[{"description": "Onboarding training", "amount_cents": 25000}])
        office.refresh_from_db()

        gateway = Gateway(client(api_base=url))
        customer_id = with_card(url, office, gateway, card="pm_card_chargeCustomerFail")
        pushed = push_all(office, gateway)
        wait_for(
            lambda: len(events_of(url, customer_id, {"invoice.payment_failed"})) == len(pushed),
            what="the automatic payments to fail",
        )
        for event in events_of(url, customer_id):
            assert deliver(event).status_code == 200
        notifications_dispatch()
        office.refresh_from_db()
        suspends_at = office.past_due_since + GRACE
        with at(suspends_at - timedelta(days=3)):  # the warning
            notifications_dispatch()
        dunning_run(now=suspends_at + timedelta(minutes=5))
        with at(suspends_at + timedelta(minutes=6)):
            notifications_dispatch()
        with_card(url, office, gateway, card="pm_card_visa")
        for invoice in finalized(office):
            stripe_post(url, f"/v1/invoices/{invoice.stripe_invoice_id}/pay")
        with at(suspends_at + timedelta(minutes=7)):
            for event in events_of(url, customer_id, {"invoice.paid"}):
                assert deliver(event).status_code == 200
            notify_credit_note_issued(
                office=office,
                credit_note_id=1,
                number="CN-2026-000001",
                total_cents=2500,
                currency="usd",
                issued_at=timezone.now(),
                invoice=Invoice.objects.filter(office=office, kind="one_off").first(),
            )
            notifications_dispatch()

    # The history really happened: every kind was sent, and the PDFs show the canary by reference.
    assert set(OutboundEmail.objects.values_list("kind", flat=True)) == set(EmailKind.values)
    assert OutboundEmail.objects.filter(status="sent").count() == OutboundEmail.objects.count() == len(smtp.received)
    pdf_text = "\n".join(text for m in smtp.received for text in pdfs_of(m).values())
    assert canary.billing_ref in pdf_text

    found = {f"email {i}: {m['Subject']}": leaks(everything_of(m)) for i, m in enumerate(smtp.received)}
    found["stored emails"] = leaks(json.dumps(list(OutboundEmail.objects.values()), cls=DjangoJSONEncoder))
    email_audits = AuditEvent.objects.filter(action__startswith="email.")
    assert email_audits.count() == len(smtp.received)
    found["audit rows"] = leaks(json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder))
    found["logs"] = leaks(caplog.text + "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records))
    assert {where: hits for where, hits in found.items() if hits} == {}
    # The audit entries of the emails name the row and its kind, never an address or the text.
    for entry in email_audits:
        assert set(entry.data) <= {"kind"} and "@" not in json.dumps(entry.data) + entry.reason
