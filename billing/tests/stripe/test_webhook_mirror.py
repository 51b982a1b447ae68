"""dj-stripe's mirror runs after our reaction, in a task — never inside the webhook request
(spec §8; issue 8, item 8): dj-stripe's `Event.process` retrieves objects from Stripe inside
its own database transaction, which the request must not wait on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing.models import StripeEvent, StripeEventStatus
from billing.stripe.gateway import Gateway, client
from billing.stripe.tasks import stripe_event_mirror_task
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import (
    billed_office,
    deliver,
    events_of,
    localstripe_env,
    push_all,
    stripe_status,
    wait_for,
    with_card,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """What the request hands to the broker. The broker is not what this test is about (a
    real worker runs tasks in billing/tests/engine/test_tasks.py): the message is kept here
    and the test runs the task itself, as a worker would."""
    sent: list[int] = []
    monkeypatch.setattr(stripe_event_mirror_task, "delay", lambda pk: sent.append(pk))
    return sent


def test_it_mirrors_in_a_task_after_the_reaction_not_in_the_request(settings, stripe_url, queued) -> None:
    with localstripe_env(settings, stripe_url):
        settings.STRIPE_PUSH_ENABLED = True
        office = billed_office(patients=2)
        gateway = Gateway(client(api_base=stripe_url))
        with_card(stripe_url, office, gateway)
        pushed = push_all(office, gateway)
        for invoice in pushed:
            wait_for(lambda inv=invoice: stripe_status(stripe_url, inv.stripe_invoice_id) == "paid", what="paid")
        events = events_of(stripe_url, office.payment_provider_customer_id, {"invoice.paid"})
        for event in events:
            assert deliver(event).status_code == 200

        rows = list(StripeEvent.objects.order_by("pk"))
        assert [r.status for r in rows] == [StripeEventStatus.PROCESSED] * len(events)  # reacted in the request
        assert not any(r.mirrored for r in rows)  # ... but dj-stripe was not called there
        assert queued == [r.pk for r in rows]

        for pk in queued:
            assert stripe_event_mirror_task.apply(args=(pk,)).get() is True
        assert StripeEvent.objects.filter(mirrored=True).count() == len(events)
        from djstripe.models import Invoice as MirrorInvoice

        assert {inv.stripe_invoice_id for inv in pushed} <= set(MirrorInvoice.objects.values_list("id", flat=True))
        assert stripe_event_mirror_task.apply(args=(queued[0],)).get() is True  # again: a no-op
