"""A local void is carried to Stripe even when its task is lost (a broker outage at the
wrong moment): until Stripe has it, the invoice's Stripe side is `pending` again, and
the hourly catch-up that re-enqueues pending pushes settles it — Stripe never goes on
collecting an invoice we voided. Against localstripe over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from billing.models import Invoice, InvoiceStatus, PushState
from billing.services import invoice_void
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

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def gateway(settings: Any, stripe_url: str) -> Iterator[Gateway]:
    settings.INVOICE_NUMBER_PREFIX = f"V{uuid.uuid4().hex[:6].upper()}"  # one localstripe, many tests
    with localstripe_env(settings, stripe_url):
        yield Gateway(client(api_base=stripe_url))


def test_a_void_whose_sync_task_was_lost_is_carried_by_the_hourly_catch_up(
    gateway: Gateway, stripe_url: str, eager: None
) -> None:
    invoice = pushed_cycle(gateway)
    assert invoice.push_state == PushState.PUSHED and stripe_status(stripe_url, invoice.stripe_invoice_id) == "open"

    # In this test process no void handler is registered: the void's task never runs, as
    # when the broker was down at commit.
    invoice_void(invoice=invoice, reason="Entered twice")
    voided = Invoice.objects.get(pk=invoice.pk)
    assert (voided.status, voided.push_state) == (InvoiceStatus.VOID, PushState.PENDING)
    assert stripe_status(stripe_url, invoice.stripe_invoice_id) == "open"  # Stripe would still collect

    assert enqueue_pending_pushes(older_than=timedelta(0)) == 1
    assert stripe_status(stripe_url, invoice.stripe_invoice_id) == "void"
    assert Invoice.objects.get(pk=invoice.pk).push_state == PushState.PUSHED
    assert [a.target_id for a in audits("invoice.voided_in_stripe")] == [str(invoice.pk)]
    assert enqueue_pending_pushes(older_than=timedelta(0)) == 0  # settled: not again


def test_a_void_never_pushed_is_settled_without_calling_stripe_for_it(gateway: Gateway, eager: None) -> None:
    office = billed_office(patients=2)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    assert setup_fee.push_state == PushState.PENDING
    invoice_void(invoice=setup_fee)
    assert enqueue_pending_pushes(older_than=timedelta(0)) >= 1
    settled = Invoice.objects.get(pk=setup_fee.pk)
    assert (settled.push_state, settled.stripe_invoice_id) == (PushState.NOT_REQUIRED, None)


def test_a_void_of_an_invoice_stripe_already_collected_is_reported_once_not_retried_hourly(
    gateway: Gateway, stripe_url: str, eager: None
) -> None:
    invoice = pushed_cycle(gateway)
    stripe_post(stripe_url, f"/v1/invoices/{invoice.stripe_invoice_id}/pay", paid_out_of_band="true")
    invoice_void(invoice=invoice, reason="Entered twice")  # the paid webhook has not arrived

    assert enqueue_pending_pushes(older_than=timedelta(0)) == 1
    assert Invoice.objects.get(pk=invoice.pk).push_state == PushState.PUSHED
    [mismatch] = audits("reconciliation.mismatch", target_id=str(invoice.pk))
    assert mismatch.data["stripe"] == "paid" and mismatch.data["local"] == "void"
    assert enqueue_pending_pushes(older_than=timedelta(0)) == 0
