"""Pushing finalized invoices to Stripe — over HTTP, with the real stripe-python client,
against our extended localstripe (devtools/localstripe/)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction

from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus, PushState
from billing.services import patient_activate, subscription_create
from billing.stripe.gateway import Gateway, OutsideTransactionRequired, client
from billing.stripe.push import invoice_push, stripe_items
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan
from billing.tests.support.localstripe_server import run_localstripe
from offices.models import CollectionMethod, Office

pytestmark = pytest.mark.django_db(transaction=True)
CHI = ZoneInfo("America/Chicago")


@pytest.fixture(scope="module")
def stripe_url():
    with run_localstripe() as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_number_prefix(settings):
    # One localstripe serves the module while the database is emptied between tests, and
    # Stripe (faithfully) refuses a number already used: give each test its own prefix.
    settings.INVOICE_NUMBER_PREFIX = f"T{uuid.uuid4().hex[:6].upper()}"


@pytest.fixture
def gateway(stripe_url):
    return Gateway(client(api_base=stripe_url))


def billed_office(*, patients: int = 5, collection_method: str = CollectionMethod.CHARGE_AUTOMATICALLY) -> Office:
    professional_plan()
    office = OfficeFactory(timezone="America/Chicago", collection_method=collection_method)
    start = datetime(2026, 3, 10, 14, tzinfo=CHI)
    with at(start - timedelta(days=1)):
        for _ in range(patients):
            patient_activate(patient=PatientFactory(office=office))
    with at(start):
        subscription_create(office=office, plan_code="professional")
    with at(start + timedelta(days=10)):
        patient_activate(patient=PatientFactory(office=office))
    with at(datetime(2026, 4, 10, 1, tzinfo=CHI)):
        billing_run()
    return office


def stripe_invoices_of(gateway: Gateway, office: Office) -> list:
    office.refresh_from_db()
    return list(gateway.invoices_list(params={"customer": office.payment_provider_customer_id, "limit": 100}))


def test_it_pushes_every_finalized_invoice_with_the_local_total_and_number(gateway):
    office = billed_office(patients=40)
    finalized = Invoice.objects.filter(office=office).exclude(status=InvoiceStatus.DRAFT).order_by("id")
    assert finalized.count() == 2  # the setup fee and the first cycle
    for invoice in finalized:
        pushed = invoice_push(invoice_id=invoice.pk, gateway=gateway)
        assert pushed.push_state == PushState.PUSHED and pushed.stripe_invoice_id
        remote = gateway.invoice_retrieve(stripe_invoice_id=pushed.stripe_invoice_id)
        assert remote["total"] == invoice.total_cents
        assert remote["number"] == invoice.number
        assert remote["status"] in ("open", "paid")
        assert remote["metadata"]["invoice_id"] == str(invoice.pk)
        assert remote["metadata"]["office_id"] == str(office.pk)
        assert remote["collection_method"] == "charge_automatically"
    office.refresh_from_db()
    assert office.payment_provider_customer_id
    assert len(stripe_invoices_of(gateway, office)) == 2


def test_it_sends_one_item_per_kind_and_price_whatever_the_patient_count(gateway):
    office = billed_office(patients=60)
    cycle = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    items = stripe_items(cycle)
    assert [(i.quantity, i.unit_amount_cents) for i in items[:2]] == [(1, 450), (60, 450)]  # activation, recurring
    assert len(items) == 2  # 61 × 450 = 27450 is above the minimum: no adjustment line
    invoice_push(invoice_id=cycle.pk, gateway=gateway)
    remote = gateway.invoice_retrieve(stripe_invoice_id=Invoice.objects.get(pk=cycle.pk).stripe_invoice_id)
    assert len(remote["lines"]["data"]) == 2 and remote["total"] == 61 * 450


def test_it_resumes_a_push_without_creating_a_second_stripe_invoice(gateway):
    office = billed_office(collection_method=CollectionMethod.SEND_INVOICE)
    cycle = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    invoice_push(invoice_id=cycle.pk, gateway=gateway)
    first = Invoice.objects.get(pk=cycle.pk).stripe_invoice_id
    # A worker that crashed before recording the push: the id is lost, the state pending.
    Invoice.objects.filter(pk=cycle.pk).update(stripe_invoice_id=None, push_state=PushState.PENDING)
    again = invoice_push(invoice_id=cycle.pk, gateway=gateway)
    assert again.stripe_invoice_id == first and again.push_state == PushState.PUSHED
    ids = [i["id"] for i in stripe_invoices_of(gateway, office) if i["metadata"]["invoice_id"] == str(cycle.pk)]
    assert ids == [first]
    remote = gateway.invoice_retrieve(stripe_invoice_id=first)
    assert remote["collection_method"] == "send_invoice" and remote["total"] == cycle.total_cents


def test_it_never_calls_stripe_inside_a_transaction(gateway):
    office = billed_office(patients=1)
    with pytest.raises(OutsideTransactionRequired), transaction.atomic():
        gateway.customer_create(office=office, key=f"office:{office.pk}:customer")


def test_it_opens_a_stripe_hosted_payment_method_page_for_a_billing_admin(stripe_url, settings, client):
    from django.contrib.auth import get_user_model

    from offices.models import Role
    from offices.services import office_member_grant

    settings.STRIPE_API_BASE = stripe_url
    office = OfficeFactory()
    admin = get_user_model().objects.create_user(username="billing-admin", password="x")
    office_member_grant(office=office, user=admin, role=Role.OFFICE_BILLING_ADMIN)
    client.force_login(admin)
    response = client.post(f"/api/v1/offices/{office.pk}/payment-method-session/", {}, content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["url"].startswith("https://") and response.json()["id"].startswith("cs_")
    office.refresh_from_db()
    assert office.payment_provider_customer_id  # the customer was created first
    assert response["Cache-Control"] == "no-store"


def test_it_syncs_a_changed_name_and_billing_email_to_the_customer(gateway, stripe_url, settings):
    from billing.stripe.push import customer_ensure, customer_sync
    from offices.services import office_update

    office = OfficeFactory(name="Old Name Clinic")
    customer_id = customer_ensure(office=office, gateway=gateway)
    office_update(office=office, name="New Name Clinic", billing_email="ap@newname.example")
    customer_sync(office_id=office.pk, gateway=gateway)
    remote = Gateway(client(api_base=stripe_url))._client.v1.customers.retrieve(customer_id)
    assert remote["name"] == "New Name Clinic" and remote["email"] == "ap@newname.example"
    assert dict(remote["metadata"].to_dict()) == {"office_id": str(office.pk)}


def test_it_carries_a_local_void_to_stripe_so_stripe_never_collects_it(gateway):
    from billing.services import invoice_void
    from billing.stripe.push import invoice_void_sync

    office = billed_office(patients=3)
    pushed_cycle = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    invoice_push(invoice_id=pushed_cycle.pk, gateway=gateway)
    invoice_void(invoice=pushed_cycle, reason="duplicate")
    invoice_void_sync(invoice_id=pushed_cycle.pk, gateway=gateway)
    stripe_id = Invoice.objects.get(pk=pushed_cycle.pk).stripe_invoice_id
    assert gateway.invoice_retrieve(stripe_invoice_id=stripe_id)["status"] == "void"

    never_pushed = Invoice.objects.get(office=office, is_setup_fee=True)
    invoice_void(invoice=never_pushed)
    assert invoice_push(invoice_id=never_pushed.pk, gateway=gateway).stripe_invoice_id is None
    invoice_void_sync(invoice_id=never_pushed.pk, gateway=gateway)
    assert Invoice.objects.get(pk=never_pushed.pk).push_state == PushState.NOT_REQUIRED
    assert len(stripe_invoices_of(gateway, office)) == 1  # only the voided cycle invoice


def test_it_refuses_and_audits_a_payload_carrying_phi_before_any_request(settings):
    from audit.models import AuditEvent
    from billing.phi_guard import PhiRefused

    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # a request would fail differently
    office = OfficeFactory(timezone="America/Chicago")
    PatientFactory(office=office, first_name="Zebulon", last_name="Quuxworth", mrn="MRN-PHI-77")
    gw = Gateway()
    with pytest.raises(PhiRefused):
        gw.invoice_item_create(
            office=office,
            params={"customer": "cus_x", "invoice": "in_x", "description": "Follow-up for Quuxworth"},
            key="k",
        )
    refusal = AuditEvent.objects.get(action="phi_guard.refused")
    assert refusal.outcome == "denied" and refusal.office_id == office.pk
    assert "Quuxworth" not in str(refusal.data) and "Quuxworth" not in refusal.reason


class CrashAfterItems(Gateway):
    """A worker that dies (here: raises) after adding `items` items to the Stripe draft."""

    def __init__(self, stripe_client, items: int) -> None:
        super().__init__(stripe_client)
        self.left = items

    def invoice_item_create(self, **kwargs):
        if self.left == 0:
            raise SystemExit("worker killed mid-push")
        self.left -= 1
        return super().invoice_item_create(**kwargs)


def test_a_resumed_push_reads_every_page_of_the_drafts_lines(gateway, stripe_url):
    """Issue 8, item 17: a retrieved invoice embeds only the first page of its lines; the
    resumed push lists them page by page (one line a page here) and adds only the missing."""
    from billing.services import invoice_create_one_off

    office = billed_office(patients=1)
    lines = [{"description": f"Training session {n}", "amount_cents": 1000 * n} for n in range(1, 5)]
    invoice = invoice_create_one_off(office=office, lines=lines)
    with pytest.raises(SystemExit):
        invoice_push(invoice_id=invoice.pk, gateway=CrashAfterItems(client(api_base=stripe_url), items=3))
    assert Invoice.objects.get(pk=invoice.pk).push_state == PushState.PENDING

    paging = Gateway(client(api_base=stripe_url))
    paging.page_size = 1
    pushed = invoice_push(invoice_id=invoice.pk, gateway=paging)
    assert pushed.push_state == PushState.PUSHED
    remote_lines = list(gateway.invoice_lines_list(stripe_invoice_id=pushed.stripe_invoice_id))
    assert sorted(line["amount"] for line in remote_lines) == [1000, 2000, 3000, 4000]  # none twice
    assert gateway.invoice_retrieve(stripe_invoice_id=pushed.stripe_invoice_id)["total"] == invoice.total_cents == 10000
