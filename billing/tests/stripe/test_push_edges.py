"""Edges of the push (spec §8, §9; issue 8, defects 3 and 4), against localstripe over HTTP:
a PHI refusal leaves nothing half-made in Stripe and tells the operator, and a void that
lands mid-push never leaves a collectable invoice in Stripe."""

from __future__ import annotations

import threading
import uuid
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from audit.models import AuditEvent
from billing.models import Invoice, InvoiceStatus, PushState
from billing.services import invoice_create_one_off, invoice_void, subscription_create
from billing.stripe.gateway import Gateway, client
from billing.stripe.push import ClaimBusy, invoice_push, invoice_void_sync
from billing.stripe.tasks import enqueue_pending_pushes
from billing.tests.support.factories import OfficeFactory, PlanFactory, at
from billing.tests.support.localstripe_server import run_localstripe
from patients.services import patient_create

pytestmark = pytest.mark.django_db(transaction=True)
CHI = ZoneInfo("America/Chicago")
MOMENT = datetime(2026, 3, 10, 14, tzinfo=CHI)


@pytest.fixture(scope="module")
def stripe_url():
    with run_localstripe() as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_number_prefix(settings):
    settings.INVOICE_NUMBER_PREFIX = f"T{uuid.uuid4().hex[:6].upper()}"


@pytest.fixture
def gateway(stripe_url):
    return Gateway(client(api_base=stripe_url))


def _one_off(description: str = "Onboarding workshop") -> Invoice:
    PlanFactory(code="basic")
    office = OfficeFactory(name="Lakeside Clinic")
    with at(MOMENT):
        subscription_create(office=office, plan_code="basic")
        return invoice_create_one_off(office=office, lines=[{"description": description, "amount_cents": 12500}])


def _stripe_invoices(gateway: Gateway, invoice: Invoice) -> list[Any]:
    invoice.office.refresh_from_db()
    customer = invoice.office.payment_provider_customer_id
    if not customer:
        return []
    return list(gateway.invoices_list(params={"customer": customer, "limit": 100}))


def test_it_sends_nothing_when_the_phi_guard_refuses_a_payload_and_says_why(gateway) -> None:
    invoice = _one_off("Workshop for the Quillfeather team")
    # A patient registered later shares that word: the text now names a patient.
    patient_create(
        office=invoice.office, first_name="Ada", last_name="Quillfeather", date_of_birth=date(1980, 2, 3), mrn="Q-77"
    )
    pushed = invoice_push(invoice_id=invoice.pk, gateway=gateway)
    assert pushed.push_state == PushState.FAILED
    assert "PHI guard refused" in pushed.push_error and "Nothing reached Stripe" in pushed.push_error
    assert pushed.stripe_invoice_id is None and pushed.push_attempts == 0
    assert _stripe_invoices(gateway, invoice) == []  # no half-made draft
    refusal = AuditEvent.objects.get(action="phi_guard.refused", data__context="stripe_push")
    assert refusal.data["invoice_id"] == invoice.pk and "Quillfeather" not in str(refusal.data)
    assert enqueue_pending_pushes(older_than=timedelta(0)) == 0  # not re-enqueued hourly


class PausingGateway(Gateway):
    """The real gateway, paused at the moment it is about to create the Stripe invoice, so
    the test can land a void exactly there (a hook on our code; Stripe stays real)."""

    def __init__(self, inner: Gateway) -> None:
        self._client = inner._client
        self.reached = threading.Event()
        self.resume = threading.Event()

    def invoice_create(self, **kwargs: Any) -> Any:
        self.reached.set()
        assert self.resume.wait(30)
        return super().invoice_create(**kwargs)


def test_it_never_leaves_a_voided_invoice_collectable_when_the_void_lands_mid_push(on_postgres, gateway) -> None:
    invoice = _one_off()
    paused = PausingGateway(gateway)
    result: dict[str, Any] = {}

    def push() -> None:
        from django.db import connection

        try:
            result["invoice"] = invoice_push(invoice_id=invoice.pk, gateway=paused)
        except Exception as exc:
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=push)
    thread.start()
    assert paused.reached.wait(30)
    invoice_void(invoice=Invoice.objects.get(pk=invoice.pk), reason="Entered twice")
    # The void sync task, as its worker runs it: retried only if it says so (ClaimBusy is a
    # transient error; a task that returns is never run again).
    try:
        invoice_void_sync(invoice_id=invoice.pk, gateway=gateway)
        retry = False
    except ClaimBusy:
        retry = True
    in_flight_enqueued = enqueue_pending_pushes(older_than=timedelta(0))
    paused.resume.set()
    thread.join(30)
    assert "error" not in result, result
    if retry:
        invoice_void_sync(invoice_id=invoice.pk, gateway=gateway)

    local = Invoice.objects.get(pk=invoice.pk)
    assert local.status == InvoiceStatus.VOID
    remote = [r for r in _stripe_invoices(gateway, invoice) if r["metadata"]["invoice_id"] == str(invoice.pk)]
    assert all(r["status"] != "open" for r in remote), [(r["id"], r["status"]) for r in remote]
    assert local.push_claimed_until is None
    assert retry and in_flight_enqueued == 0  # it waited for the push; the hourly re-enqueue skipped it
