"""Stripe rules of docs/payment-plan.md that docs/spec-map.md listed as `no test` (§6, §8,
§10), against our localstripe over HTTP with the real stripe-python client: the push task
run after commit by the production wiring, the void of an uncollectible invoice, and the
last payment time of `payment-status`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus, PushState
from billing.seam import register_customer_handler, register_push_handler, register_void_handler
from billing.services import invoice_create_one_off, invoice_void, patient_activate, subscription_create
from billing.stripe.events import invoice_mark_paid_out_of_band
from billing.stripe.gateway import Gateway, client
from billing.stripe.push import invoice_void_sync
from billing.stripe.wiring import connect
from billing.tasks import billing_run_tick
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, operator
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import (
    audits,
    billed_office,
    deliver,
    events_of,
    localstripe_env,
    push_all,
    stripe_get,
    stripe_post,
)
from config.celery_app import app
from offices.models import CollectionMethod, Office, Role
from offices.services import office_member_grant

pytestmark = pytest.mark.django_db(transaction=True)
CHI = ZoneInfo("America/Chicago")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def stripe_env(settings: Any, stripe_url: str) -> Iterator[str]:
    with localstripe_env(settings, stripe_url):
        yield stripe_url


@pytest.fixture
def wired(settings: Any, stripe_env: str) -> Iterator[str]:
    """The application as deployed with Stripe on (billing/stripe/wiring.py registers the
    tasks that answer the seam), with Celery eager: each task runs where it is published,
    right after the commit that asked for it (the broker itself is proven with a real
    worker in billing/tests/engine/test_tasks.py)."""
    settings.STRIPE_PUSH_ENABLED = True
    app.conf.task_always_eager = True
    connect()
    try:
        yield stripe_env
    finally:
        register_push_handler(None)
        register_void_handler(None)
        register_customer_handler(None)
        app.conf.task_always_eager = False


def remote_invoices(url: str, office: Office) -> list[dict[str, Any]]:
    office.refresh_from_db()
    return list(stripe_get(url, "/v1/invoices", customer=office.payment_provider_customer_id, limit=100)["data"])


# --- §6, §8: the push task after commit --------------------------------------------------


def test_it_pushes_each_finalized_non_zero_invoice_by_a_task_after_commit(wired: str) -> None:
    url = wired
    PlanFactory(code="basic", per_patient_cents=450, minimum_cents=0, setup_fee_cents=20000)
    billed, empty = OfficeFactory(name="Billed Clinic"), OfficeFactory(name="Empty Clinic")
    with at(local(2026, 3, 1, 9)):
        patient_activate(patient=PatientFactory(office=billed))
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=billed, plan_code="basic")
        subscription_create(office=empty, plan_code="basic")
    for office in (billed, empty):  # the customer exists right after the subscription
        office.refresh_from_db()
        assert office.payment_provider_customer_id

    with at(local(2026, 4, 10, 1)):
        billing_run()

    finalized = Invoice.objects.exclude(status=InvoiceStatus.DRAFT).order_by("office_id", "id")
    pushed = [inv for inv in finalized if inv.total_cents > 0]
    assert [(inv.office_id, inv.kind, inv.total_cents) for inv in pushed] == [
        (billed.pk, InvoiceKind.CYCLE, 450),  # its draft opened before the setup fee was made
        (billed.pk, InvoiceKind.ONE_OFF, 20000),
        (empty.pk, InvoiceKind.ONE_OFF, 20000),
    ]
    for invoice in pushed:
        assert invoice.push_state == PushState.PUSHED and invoice.stripe_invoice_id
        remote = stripe_get(url, f"/v1/invoices/{invoice.stripe_invoice_id}")
        assert (remote["number"], remote["total"], remote["status"]) == (invoice.number, invoice.total_cents, "open")
    zero = Invoice.objects.get(office=empty, kind=InvoiceKind.CYCLE, status=InvoiceStatus.PAID)
    assert (zero.total_cents, zero.push_state, zero.stripe_invoice_id) == (0, PushState.NOT_REQUIRED, None)
    assert [r["metadata"]["invoice_id"] for r in remote_invoices(url, empty)] == [str(pushed[2].pk)]
    assert len(audits("invoice.pushed")) == 3

    # A push whose message never reached a worker (as when the broker was down at commit)
    # stays pending; the hourly tick re-enqueues it once it is 10 minutes old.
    register_push_handler(None)
    with at(local(2026, 4, 12, 9)):
        lost = invoice_create_one_off(office=billed, lines=[{"description": "Training", "amount_cents": 5000}])
    connect()
    assert Invoice.objects.get(pk=lost.pk).push_state == PushState.PENDING
    with at(local(2026, 4, 12, 9, 5)):
        billing_run_tick.apply()
    assert Invoice.objects.get(pk=lost.pk).push_state == PushState.PENDING  # not yet 10 minutes old
    with at(local(2026, 4, 12, 9, 11)):
        billing_run_tick.apply()
    lost.refresh_from_db()
    assert lost.push_state == PushState.PUSHED
    assert stripe_get(url, f"/v1/invoices/{lost.stripe_invoice_id}")["total"] == 5000


# --- §6: an uncollectible invoice can be voided ----------------------------------------------


def test_it_voids_an_uncollectible_invoice_keeping_its_content_and_voids_it_in_stripe(stripe_env: str) -> None:
    url = stripe_env
    office = billed_office(patients=2, collection_method=CollectionMethod.SEND_INVOICE)
    gateway = Gateway(client(api_base=url))
    push_all(office, gateway)
    cycle = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    stripe_post(url, f"/v1/invoices/{cycle.stripe_invoice_id}/mark_uncollectible")  # written off in Stripe
    for event in events_of(url, office.payment_provider_customer_id, {"invoice.marked_uncollectible"}):
        assert deliver(event).status_code == 200
    cycle.refresh_from_db()
    assert cycle.status == InvoiceStatus.UNCOLLECTIBLE
    content = (cycle.number, cycle.total_cents, list(cycle.lines.order_by("pk").values_list("kind", "amount_cents")))

    with at(local(2026, 4, 20, 9)):
        voided = invoice_void(invoice=cycle, actor=operator(), reason="written off, billed again")

    assert (voided.status, voided.voided_at) == (InvoiceStatus.VOID, local(2026, 4, 20, 9))
    voided.refresh_from_db()
    assert (
        voided.number,
        voided.total_cents,
        list(voided.lines.order_by("pk").values_list("kind", "amount_cents")),
    ) == (content)
    (entry,) = audits("invoice.voided", target_id=str(cycle.pk))
    assert entry.actor_label == "operator" and entry.data["total_cents"] == 15000
    assert voided.push_state == PushState.PENDING  # Stripe still has it as uncollectible
    invoice_void_sync(invoice_id=cycle.pk, gateway=gateway)
    assert stripe_get(url, f"/v1/invoices/{cycle.stripe_invoice_id}")["status"] == "void"
    assert Invoice.objects.get(pk=cycle.pk).push_state == PushState.PUSHED


# --- §8, §10: the last payment of payment-status -----------------------------------------------


def test_it_reports_the_time_of_the_latest_payment_in_the_payment_status(stripe_env: str) -> None:
    url = stripe_env
    office = billed_office(patients=1, collection_method=CollectionMethod.SEND_INVOICE)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    cycle = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    gateway = Gateway(client(api_base=url))
    push_all(office, gateway)
    admin = get_user_model().objects.create_user(username="billing-admin", password="pw-spec-gaps-1234")
    office_member_grant(office=office, user=admin, role=Role.OFFICE_BILLING_ADMIN)

    def payment_status(when: datetime) -> dict[str, Any]:
        http = Client()
        with at(when):
            http.force_login(admin)
            response = http.get(f"/api/v1/offices/{office.pk}/payment-status/")
        assert response.status_code == 200, response.content
        return dict(response.json())

    def paid_at(body: dict[str, Any]) -> datetime | None:
        value = body["last_payment_at"]
        return None if value is None else datetime.fromisoformat(value)

    before = payment_status(local(2026, 4, 12, 9))
    assert paid_at(before) is None and before["outstanding_cents"] == 65000

    first = local(2026, 4, 15, 10)  # the newer invoice is paid first, through the service
    with at(first):
        invoice_mark_paid_out_of_band(
            invoice=cycle,
            actor=operator(),
            method="wire",
            reference="W-20260414",
            received_on=date(2026, 4, 14),
            amount_cents=15000,
            gateway=gateway,
        )
    after_one = payment_status(first + timedelta(hours=1))
    assert paid_at(after_one) == first and after_one["outstanding_cents"] == 50000

    second = local(2026, 4, 20, 16)  # then the older one, through the admin's "record payment"
    root = get_user_model().objects.create_superuser(username="root", email="root@vendor.example", password="x")
    console = Client()
    with at(second):
        console.force_login(root)
        recorded = console.post(
            reverse("admin:billing_invoice_changelist"),
            {
                "action": "mark_paid_out_of_band",
                "index": "0",
                "_selected_action": [str(setup_fee.pk)],
                "apply": "1",
                "method": "cheque",
                "reference": "004211",
                "received_on": "2026-04-18",
                "amount": "500.00",
            },
        )
    assert recorded.status_code == 302, recorded.content.decode()[:2000]
    assert Invoice.objects.get(pk=setup_fee.pk).paid_at == second

    after_two = payment_status(second + timedelta(days=1))
    assert paid_at(after_two) == second and after_two["outstanding_cents"] == 0
    assert paid_at(after_two) == max(inv.paid_at for inv in Invoice.objects.filter(pk__in=[cycle.pk, setup_fee.pk]))
