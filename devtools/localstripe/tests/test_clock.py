"""The movable clock (devtools/localstripe/clock.py, docs/stripe-localstripe.md §8): objects,
status transitions and events of a history built "in the past" carry that past's instants."""

from __future__ import annotations

import time

import requests
import stripe

from billing.tests.support.localstripe_server import run_localstripe

API_KEY = "sk_test_" + "LocalstripeClockTests0000"
PAST = 1_780_000_000  # 2026-05-28 20:26:40 UTC


def test_it_stamps_objects_transitions_and_events_with_the_clock_set_then_returns_to_real_time():
    with run_localstripe() as url:
        client = stripe.StripeClient(API_KEY, base_addresses={"api": url}, max_network_retries=2)
        moved = requests.post(f"{url}/_config/clock", data={"frozen_time": str(PAST)}, timeout=5).json()
        assert abs(moved["now"] - PAST) <= 1

        customer = client.v1.customers.create(params={"name": "Clinic office"})
        card = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
        client.v1.customers.update(customer.id, params={"invoice_settings": {"default_payment_method": card.id}})
        invoice = client.v1.invoices.create(params={"customer": customer.id})
        client.v1.invoice_items.create(params={"invoice": invoice.id, "amount": 4_500, "description": "Charge"})
        client.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": True})
        deadline = time.monotonic() + 10
        while client.v1.invoices.retrieve(invoice.id).status != "paid":  # automatic collection, ~1 s
            assert time.monotonic() < deadline, "localstripe did not collect the invoice"
            time.sleep(0.1)
        paid = client.v1.invoices.retrieve(invoice.id)
        events = [e for e in client.v1.events.list(params={"limit": 100}).data if e.data.object["id"] == invoice.id]

        assert PAST <= customer.created <= PAST + 5
        assert PAST <= paid.created <= PAST + 5
        assert PAST <= paid.status_transitions.finalized_at <= paid.status_transitions.paid_at <= PAST + 5
        assert {"invoice.finalized", "invoice.paid"} <= {e.type for e in events}
        assert all(PAST <= e.created <= PAST + 5 for e in events)

        back = requests.post(f"{url}/_config/clock", data={}, timeout=5).json()
        later = client.v1.customers.create(params={"name": "Another office"})

        assert back["offset_seconds"] == 0
        assert abs(later.created - time.time()) <= 5
        assert abs(requests.get(f"{url}/_config/clock", timeout=5).json()["now"] - time.time()) <= 5
