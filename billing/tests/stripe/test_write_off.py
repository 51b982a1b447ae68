"""An operator's write-off (spec §12: "an operator marks an open invoice `uncollectible` with a
reason; it is carried to Stripe and no longer counts as past due for dunning"): the service,
its Stripe carry (also when its task is lost, by the hourly catch-up), and the console's
button. Against localstripe over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import Invoice, InvoiceStatus, PushState
from billing.services import invoice_mark_uncollectible
from billing.stripe.gateway import Gateway, client
from billing.stripe.tasks import enqueue_pending_pushes
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import (
    audits,
    billed_office,
    localstripe_env,
    pushed_cycle,
    stripe_post,
    stripe_status,
)
from config.errors import ApplicationError, ConflictError
from offices.models import SubscriptionStatus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def gateway(settings: Any, stripe_url: str) -> Iterator[Gateway]:
    settings.INVOICE_NUMBER_PREFIX = f"W{uuid.uuid4().hex[:6].upper()}"  # one localstripe, many tests
    with localstripe_env(settings, stripe_url):
        yield Gateway(client(api_base=stripe_url))


def test_it_writes_off_an_open_invoice_and_stripe_stops_collecting_it(
    gateway: Gateway, stripe_url: str, eager: None
) -> None:
    invoice = pushed_cycle(gateway)
    assert stripe_status(stripe_url, invoice.stripe_invoice_id) == "open"
    # No status-sync handler runs in this test process: the task is "lost", as in a broker
    # outage at commit; the hourly catch-up carries it.
    written = invoice_mark_uncollectible(invoice=invoice, reason="Clinic closed, no assets")
    assert (written.status, written.push_state) == (InvoiceStatus.UNCOLLECTIBLE, PushState.PENDING)
    assert written.marked_uncollectible_at is not None
    [entry] = audits("invoice.marked_uncollectible", target_id=str(invoice.pk))
    assert entry.reason == "Clinic closed, no assets" and entry.data["total_cents"] == invoice.total_cents

    assert enqueue_pending_pushes(older_than=timedelta(0)) == 1
    assert stripe_status(stripe_url, invoice.stripe_invoice_id) == "uncollectible"
    assert Invoice.objects.get(pk=invoice.pk).push_state == PushState.PUSHED
    assert [a.target_id for a in audits("invoice.marked_uncollectible_in_stripe")] == [str(invoice.pk)]
    assert enqueue_pending_pushes(older_than=timedelta(0)) == 0  # settled: not again


def test_it_needs_a_reason_refuses_what_is_not_open_and_keeps_the_invoice(gateway: Gateway) -> None:
    office = billed_office(patients=2)
    draft = Invoice.objects.get(office=office, status=InvoiceStatus.DRAFT)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    with pytest.raises(ApplicationError, match="Say why"):
        invoice_mark_uncollectible(invoice=setup_fee, reason="  ")
    with pytest.raises(ConflictError, match="only an open invoice"):
        invoice_mark_uncollectible(invoice=draft, reason="Wrong one")
    assert Invoice.objects.get(pk=setup_fee.pk).status == InvoiceStatus.OPEN
    assert not audits("invoice.marked_uncollectible")


def test_it_settles_a_write_off_stripe_never_saw_without_calling_stripe(gateway: Gateway, eager: None) -> None:
    office = billed_office(patients=2)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    assert (setup_fee.push_state, setup_fee.stripe_invoice_id) == (PushState.PENDING, None)
    invoice_mark_uncollectible(invoice=setup_fee, reason="Waived after dispute over terms")
    enqueue_pending_pushes(older_than=timedelta(0))
    settled = Invoice.objects.get(pk=setup_fee.pk)
    assert (settled.status, settled.push_state, settled.stripe_invoice_id) == (
        InvoiceStatus.UNCOLLECTIBLE,
        PushState.NOT_REQUIRED,
        None,
    )


def test_it_reports_once_a_write_off_of_an_invoice_stripe_already_collected(
    gateway: Gateway, stripe_url: str, eager: None
) -> None:
    invoice = pushed_cycle(gateway)
    stripe_post(stripe_url, f"/v1/invoices/{invoice.stripe_invoice_id}/pay", paid_out_of_band="true")
    invoice_mark_uncollectible(invoice=invoice, reason="No answer for months")  # the paid webhook is late
    assert enqueue_pending_pushes(older_than=timedelta(0)) == 1
    [mismatch] = audits("reconciliation.mismatch", target_id=str(invoice.pk))
    assert (mismatch.data["local"], mismatch.data["stripe"]) == ("uncollectible", "paid")
    assert enqueue_pending_pushes(older_than=timedelta(0)) == 0


def test_it_lifts_the_suspension_a_written_off_invoice_caused(gateway: Gateway, settings: Any) -> None:
    office = billed_office(patients=2)
    invoices = Invoice.objects.filter(office=office, status=InvoiceStatus.OPEN)
    long_ago = timezone.now() - timedelta(days=settings.BILLING_GRACE_DAYS + 5)
    invoices.update(past_due_at=long_ago)
    from billing.dunning import dunning_run

    dunning_run()
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED
    for invoice in invoices.order_by("pk"):
        invoice_mark_uncollectible(invoice=invoice, reason="Agreed settlement")
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE and office.past_due_since is None


def test_it_offers_write_off_on_an_open_invoice_page_and_asks_why(gateway: Gateway) -> None:
    office = billed_office(patients=2)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    draft = Invoice.objects.get(office=office, status=InvoiceStatus.DRAFT)
    console = Client()
    console.force_login(get_user_model().objects.create_superuser(username="root", password="x"))
    base = reverse("admin:billing_invoice_changelist")
    assert f"{base}{setup_fee.pk}/write-off/" in console.get(f"{base}{setup_fee.pk}/change/").content.decode()
    assert f"{base}{draft.pk}/write-off/" not in console.get(f"{base}{draft.pk}/change/").content.decode()

    ask = console.get(f"{base}{setup_fee.pk}/write-off/")
    assert ask.status_code == 200 and 'name="reason"' in ask.content.decode()
    again = console.post(f"{base}{setup_fee.pk}/write-off/", {"apply": "1", "reason": ""})
    assert "Say why these invoices are written off." in again.content.decode()
    assert Invoice.objects.get(pk=setup_fee.pk).status == InvoiceStatus.OPEN
    done = console.post(f"{base}{setup_fee.pk}/write-off/", {"apply": "1", "reason": "Fee waived by sales"})
    assert done.status_code == 302 and done["Location"] == f"{base}{setup_fee.pk}/change/"
    assert Invoice.objects.get(pk=setup_fee.pk).status == InvoiceStatus.UNCOLLECTIBLE
    [entry] = audits("invoice.marked_uncollectible", target_id=str(setup_fee.pk))
    assert entry.actor_label == "root" and entry.reason == "Fee waived by sales"


def test_it_writes_off_through_the_api_for_operators_only(gateway: Gateway) -> None:
    office = billed_office(patients=2)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    draft = Invoice.objects.get(office=office, status=InvoiceStatus.DRAFT)
    api = Client()
    api.force_login(get_user_model().objects.create_superuser(username="root", password="x"))
    url = f"/api/v1/invoices/{setup_fee.pk}/mark-uncollectible/"
    missing = api.post(url, {}, content_type="application/json")
    assert missing.status_code == 400 and "reason" in missing.json()["extra"]["fields"]
    conflict = api.post(
        f"/api/v1/invoices/{draft.pk}/mark-uncollectible/", {"reason": "x"}, content_type="application/json"
    )
    assert conflict.status_code == 409 and "only an open invoice" in conflict.json()["message"]
    done = api.post(url, {"reason": "Waived by sales"}, content_type="application/json")
    assert done.status_code == 200 and done.json()["status"] == "uncollectible"
    assert audits("invoice.marked_uncollectible", target_id=str(setup_fee.pk))[0].reason == "Waived by sales"
