"""Payment failed, suspended, reactivated — from Stripe's own events: a declined card in
our localstripe (over HTTP), its signed `invoice.payment_failed` deliveries posted to our
webhook endpoint, then the dunning pass and the payment (spec §8, §12 emails)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from audit.models import AuditEvent
from billing.dunning import dunning_run
from billing.stripe.gateway import Gateway, client
from billing.tests.support.factories import at
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import (
    billed_office,
    deliver,
    events_of,
    finalized,
    localstripe_env,
    push_all,
    stripe_post,
    wait_for,
    with_card,
)
from notifications.models import EmailKind, OutboundEmail
from notifications.services import notifications_dispatch
from notifications.tests.support import text_of
from offices.models import SubscriptionStatus

pytestmark = pytest.mark.django_db(transaction=True)
GRACE = timedelta(days=14)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def stripe_env(settings, stripe_url) -> Iterator[str]:
    with localstripe_env(settings, stripe_url):
        yield stripe_url


def test_it_mails_a_failed_payment_once_per_attempt_then_the_suspension_and_the_recovery(stripe_env, smtp):
    url = stripe_env
    office = billed_office(patients=2)
    gateway = Gateway(client(api_base=url))
    customer_id = with_card(url, office, gateway, card="pm_card_chargeCustomerFail")
    pushed = push_all(office, gateway)
    failed = wait_for(
        lambda: (e := events_of(url, customer_id, {"invoice.payment_failed"})) and len(e) == len(pushed) and e,
        what="both automatic payments to fail",
    )
    for event in events_of(url, customer_id):
        assert deliver(event).status_code == 200
    for event in failed:  # Stripe delivers at least once: the same events again
        assert deliver(event).status_code == 200
    assert AuditEvent.objects.filter(action="payment.failed", office_id=office.pk).count() == 2
    notifications_dispatch()
    rows = OutboundEmail.objects.filter(kind=EmailKind.PAYMENT_FAILED).order_by("id")
    assert rows.count() == 2
    office.refresh_from_db()
    suspends_at = office.past_due_since + GRACE
    messages = [m for m in smtp.received if m["Subject"].startswith("Payment failed")]
    assert sorted(m["Subject"] for m in messages) == sorted(
        f"Payment failed for invoice {i.number} ({i.total_cents // 100:,}.00 USD)" for i in finalized(office)
    )
    from billing.dates import local_minute

    assert all(f"suspended after {local_minute(suspends_at, office.timezone)}" in text_of(m) for m in messages)

    later = suspends_at + timedelta(minutes=5)
    dunning_run(now=later)
    with at(later):
        notifications_dispatch()
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED
    assert [m["Subject"] for m in smtp.received].count("Billing suspended: new patient activations are paused") == 1

    with_card(url, office, gateway, card="pm_card_visa")
    for invoice in finalized(office):
        stripe_post(url, f"/v1/invoices/{invoice.stripe_invoice_id}/pay")
    with at(later + timedelta(minutes=1)):
        for event in events_of(url, customer_id, {"invoice.paid"}):
            assert deliver(event).status_code == 200
        notifications_dispatch()
        notifications_dispatch()
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert [m["Subject"] for m in smtp.received].count("Billing active again") == 1
    kinds = list(OutboundEmail.objects.order_by("id").values_list("kind", flat=True))
    assert kinds.count(EmailKind.INVOICE_ISSUED) == 2 and len(smtp.received) == len(kinds) == 6
