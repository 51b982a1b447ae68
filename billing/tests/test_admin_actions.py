"""The operator console's "Push pending invoices to Stripe now" action (billing/admin.py,
`InvoiceAdmin.push_to_stripe`; spec §1, §8), driven through Django's test client as a
logged-in superuser against our localstripe over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from billing.models import Invoice, InvoiceStatus, PushState
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import audits, billed_office, localstripe_env, stripe_get
from offices.models import Office

pytestmark = pytest.mark.django_db(transaction=True)
CHANGELIST = "admin:billing_invoice_changelist"


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def stripe_env(settings: Any, stripe_url: str) -> Iterator[str]:
    with localstripe_env(settings, stripe_url):
        yield stripe_url


@pytest.fixture
def console(client: Client) -> Client:
    root = get_user_model().objects.create_superuser(username="root", email="root@vendor.example", password="x")
    client.force_login(root)
    return client


def push_action(console: Client, invoices: list[Invoice]) -> tuple[str, str]:
    """Run the action on the selected invoices; the request's id and the messages shown."""
    data = {"action": "push_to_stripe", "index": "0", "_selected_action": [str(inv.pk) for inv in invoices]}
    attempts = list(Invoice.objects.filter(pk__in=[inv.pk for inv in invoices]).values_list("pk", "push_attempts"))
    response = console.post(reverse(CHANGELIST), data)
    if response.status_code == 200:  # first a confirmation page listing what waits; nothing sent yet
        assert "Push" in response.content.decode() and 'name="apply"' in response.content.decode()
        assert attempts == list(
            Invoice.objects.filter(pk__in=[inv.pk for inv in invoices]).values_list("pk", "push_attempts")
        )
        response = console.post(reverse(CHANGELIST), {**data, "apply": "1"})
    assert response.status_code == 302, response.content.decode()[:2000]  # back to the changelist
    page = console.get(response["Location"])
    assert page.status_code == 200
    return response["X-Request-ID"], page.content.decode()


def stripe_invoices(url: str, office: Office) -> list[dict[str, Any]]:
    office.refresh_from_db()
    return list(stripe_get(url, "/v1/invoices", customer=office.payment_provider_customer_id, limit=100)["data"])


def test_it_pushes_the_selected_pending_invoices_and_never_a_second_time(stripe_env: str, console: Client) -> None:
    url = stripe_env
    office = billed_office(patients=3)
    pending = list(Invoice.objects.filter(office=office).exclude(status=InvoiceStatus.DRAFT).order_by("pk"))
    draft = Invoice.objects.get(office=office, status=InvoiceStatus.DRAFT)
    assert [(inv.push_state, inv.stripe_invoice_id) for inv in pending] == [(PushState.PENDING, None)] * 2

    request_id, html = push_action(console, [*pending, draft])

    for invoice in pending:
        invoice.refresh_from_db()
        assert invoice.push_state == PushState.PUSHED and invoice.stripe_invoice_id
        remote = stripe_get(url, f"/v1/invoices/{invoice.stripe_invoice_id}")
        assert (remote["total"], remote["number"]) == (invoice.total_cents, invoice.number)
        assert remote["metadata"]["invoice_id"] == str(invoice.pk)
        assert f"{invoice.number}: pushed." in html
    assert Invoice.objects.get(pk=draft.pk).push_state == PushState.NOT_REQUIRED  # a draft is never pushed
    entries = audits("invoice.pushed", office_id=office.pk)
    assert sorted(e.target_id for e in entries) == sorted(str(inv.pk) for inv in pending)
    assert {e.request_id for e in entries} == {request_id}  # done by that console request
    assert {r["id"] for r in stripe_invoices(url, office)} == {inv.stripe_invoice_id for inv in pending}

    # The same action again: nothing is waiting, nothing is created.
    _, html = push_action(console, pending)
    assert "No selected invoice is waiting for a Stripe push." in html
    assert len(stripe_invoices(url, office)) == 2
    assert len(audits("invoice.pushed", office_id=office.pk)) == 2

    # An invoice Stripe holds although our side says pending (the push died before storing
    # its outcome): the action finds it by its metadata instead of creating another.
    cycle = pending[1]
    Invoice.objects.filter(pk=cycle.pk).update(push_state=PushState.PENDING, stripe_invoice_id=None)
    _, html = push_action(console, [cycle])
    cycle_before = cycle.stripe_invoice_id
    cycle.refresh_from_db()
    assert (cycle.push_state, cycle.stripe_invoice_id) == (PushState.PUSHED, cycle_before)
    assert f"{cycle.number}: pushed." in html
    assert len(stripe_invoices(url, office)) == 2
