"""Our localstripe extensions (devtools/localstripe/), through the real stripe-python
client over HTTP, against what Stripe's API documents (docs/stripe-localstripe.md)."""

from __future__ import annotations

import http.server
import json
import queue
import socket
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager

import pytest
import stripe

from billing.tests.support.localstripe_server import run_localstripe

API_KEY = "sk_test_" + "LocalstripeExtTests000000"
OTHER_API_KEY = "sk_test_" + "AnotherAccountKey00000000"
FAILING_CARD = "pm_card_chargeCustomerFail"  # 4000000000000341: attaches, every charge fails


@pytest.fixture(scope="module")
def stripe_url():
    with run_localstripe() as url:
        yield url


def make_client(url: str, api_key: str = API_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(api_key, base_addresses={"api": url}, max_network_retries=2)


@pytest.fixture
def client(stripe_url):
    return make_client(stripe_url)


def customer_with_card(client: stripe.StripeClient, card: str = "pm_card_visa"):
    customer = client.v1.customers.create(params={"name": "Clinic office", "email": "billing@example.com"})
    method = client.v1.payment_methods.attach(card, params={"customer": customer.id})
    client.v1.customers.update(customer.id, params={"invoice_settings": {"default_payment_method": method.id}})
    return customer


def open_invoice(client, customer, *, amount=12_345, **params):
    invoice = client.v1.invoices.create(params={"customer": customer.id, **params})
    client.v1.invoice_items.create(params={"invoice": invoice.id, "amount": amount, "description": "Charge"})
    return client.v1.invoices.finalize_invoice(invoice.id)


def events_about(client, object_id: str, *types: str) -> list[str]:
    """Types of the events whose object is `object_id`, newest first."""
    params = {"limit": 100}
    if types:
        params["types"] = list(types)
    return [e.type for e in client.v1.events.list(params=params).data if e.data.object["id"] == object_id]


def test_it_creates_an_empty_draft_invoice_for_a_customer_without_subscription(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    pending = client.v1.invoice_items.create(params={"customer": customer.id, "amount": 500, "currency": "usd"})

    invoice = client.v1.invoices.create(
        params={
            "customer": customer.id,
            "collection_method": "charge_automatically",
            "number": "TEST-2026-000001",
            "description": "March 2026",
            "metadata": {"invoice_id": "41", "office_id": "7"},
        }
    )

    assert invoice.status == "draft"
    assert invoice.customer == customer.id
    assert invoice.number == "TEST-2026-000001"
    assert invoice.metadata.to_dict() == {"invoice_id": "41", "office_id": "7"}
    assert invoice.collection_method == "charge_automatically"
    assert invoice.auto_advance is False  # Stripe's default for API-created invoices
    assert invoice.discounts == []
    assert invoice.lines.data == []  # pending items are excluded unless asked for
    assert (invoice.total, invoice.amount_due, invoice.currency) == (0, 0, "usd")
    assert client.v1.invoice_items.retrieve(pending.id).invoice is None
    assert events_about(client, invoice.id, "invoice.created") == ["invoice.created"]


def test_it_prices_items_as_quantity_times_unit_amount_and_finalizes_to_their_sum(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    invoice = client.v1.invoices.create(params={"customer": customer.id, "metadata": {"invoice_id": "42"}})

    patients = client.v1.invoice_items.create(
        params={
            "invoice": invoice.id,
            "quantity": 132,
            "unit_amount_decimal": "450",
            "description": "Active patients, 2026-03-10 to 2026-04-10",
            "metadata": {"kind": "recurring"},
        }
    )
    setup = client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "quantity": 2, "unit_amount": 25_000}
    )
    draft = client.v1.invoices.retrieve(invoice.id)
    finalized = client.v1.invoices.finalize_invoice(invoice.id)

    assert (patients.amount, patients.quantity, patients.unit_amount_decimal) == (59_400, 132, "450")
    assert (setup.amount, setup.quantity) == (50_000, 2)
    assert [(line.quantity, line.amount) for line in draft.lines.data] == [(132, 59_400), (2, 50_000)]
    assert draft.total == 109_400
    assert finalized.status == "open"
    assert finalized.total == finalized.amount_due == finalized.amount_remaining == 109_400
    assert finalized.status_transitions.finalized_at is not None
    assert finalized.number  # assigned at finalization when none was set


def test_it_numbers_invoices_per_customer_and_refuses_a_number_in_use(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    first = open_invoice(client, customer)
    second = open_invoice(client, customer)
    client.v1.invoices.create(params={"customer": customer.id, "number": "UNIQUE-NUMBER-1"})

    assert first.number.endswith("-0001") and second.number.endswith("-0002")
    assert first.number.split("-")[0] == second.number.split("-")[0]
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create(params={"customer": customer.id, "number": "UNIQUE-NUMBER-1"})
    assert refused.value.param == "number"


def test_it_refuses_items_on_a_finalized_invoice(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    invoice = open_invoice(client, customer)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoice_items.create(params={"invoice": invoice.id, "amount": 100})

    assert refused.value.code == "invoice_not_editable"
    assert client.v1.invoices.retrieve(invoice.id).total == 12_345


def test_it_pays_an_open_invoice_with_the_customers_card(client):
    customer = customer_with_card(client)
    invoice = open_invoice(client, customer, amount=64_400)

    paid = client.v1.invoices.pay(invoice.id)

    assert paid.status == "paid"
    assert (paid.amount_paid, paid.amount_remaining, paid.attempt_count) == (64_400, 0, 1)
    assert paid.status_transitions.paid_at is not None
    intent = client.v1.payment_intents.retrieve(paid.payment_intent)
    assert (intent.status, intent.amount, intent.invoice) == ("succeeded", 64_400, invoice.id)
    assert events_about(client, invoice.id, "invoice.*")[:3] == [
        "invoice.payment_succeeded",
        "invoice.paid",
        "invoice.finalized",
    ]


def test_it_gives_send_invoice_invoices_a_due_date_and_sends_them(client):
    customer = client.v1.customers.create(params={"name": "Office", "email": "billing@example.com"})

    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.create(params={"customer": customer.id, "collection_method": "send_invoice"})
    invoice = client.v1.invoices.create(
        params={"customer": customer.id, "collection_method": "send_invoice", "days_until_due": 30}
    )
    client.v1.invoice_items.create(params={"invoice": invoice.id, "amount": 15_000})
    client.v1.invoices.finalize_invoice(invoice.id)
    sent = client.v1.invoices.send_invoice(invoice.id)

    assert (sent.collection_method, sent.days_until_due) == ("send_invoice", 30)
    assert sent.due_date == invoice.created + 30 * 86_400
    assert sent.status == "open"
    assert events_about(client, invoice.id, "invoice.sent") == ["invoice.sent"]
    charge_automatically = open_invoice(client, customer)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.send_invoice(charge_automatically.id)


def test_it_raises_a_card_error_and_records_invoice_payment_failed_for_a_declined_card(client):
    customer = customer_with_card(client, FAILING_CARD)
    invoice = open_invoice(client, customer)

    with pytest.raises(stripe.CardError) as declined:
        client.v1.invoices.pay(invoice.id)

    assert declined.value.http_status == 402
    assert declined.value.code == "card_declined"
    assert declined.value.error.type == "card_error"
    after = client.v1.invoices.retrieve(invoice.id)
    assert (after.status, after.attempt_count, after.attempted) == ("open", 1, True)
    assert events_about(client, invoice.id, "invoice.payment_failed") == ["invoice.payment_failed"]
    assert events_about(client, invoice.id, "invoice.paid") == []


def test_it_voids_an_open_invoice_and_refuses_to_void_a_draft(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    invoice = open_invoice(client, customer)
    draft = client.v1.invoices.create(params={"customer": customer.id})

    voided = client.v1.invoices.void_invoice(invoice.id)

    assert voided.status == "void"
    assert voided.status_transitions.voided_at is not None
    assert client.v1.payment_intents.retrieve(voided.payment_intent).status == "canceled"
    assert events_about(client, invoice.id, "invoice.voided") == ["invoice.voided"]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.void_invoice(draft.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})


def test_it_marks_an_open_invoice_uncollectible(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    invoice = open_invoice(client, customer)

    marked = client.v1.invoices.mark_uncollectible(invoice.id)

    assert marked.status == "uncollectible"
    assert marked.amount_remaining == 12_345
    assert marked.status_transitions.marked_uncollectible_at is not None
    assert events_about(client, invoice.id, "invoice.marked_uncollectible") == ["invoice.marked_uncollectible"]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.mark_uncollectible(invoice.id)
    assert client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True}).status == "paid"


def test_it_records_a_payment_made_outside_stripe_without_charging(client):
    customer = customer_with_card(client)
    invoice = open_invoice(client, customer)

    paid = client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})

    assert paid.status == "paid"
    assert paid.paid_out_of_band is True
    assert paid.amount_paid_off_stripe == paid.amount_due  # the pinned API version's field
    assert paid.attempt_count == 0
    assert client.v1.payment_intents.retrieve(paid.payment_intent).status == "canceled"
    assert client.v1.charges.list(params={"customer": customer.id}).data == []
    assert events_about(client, invoice.id, "invoice.paid", "invoice.payment_succeeded") == ["invoice.paid"]


def test_it_replays_a_request_sent_again_with_the_same_idempotency_key(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    params = {"customer": customer.id, "metadata": {"invoice_id": "43"}}

    first = client.v1.invoices.create(params=params, options={"idempotency_key": "invoice:43:create"})
    again = client.v1.invoices.create(params=params, options={"idempotency_key": "invoice:43:create"})

    assert again.id == first.id
    assert [inv.id for inv in client.v1.invoices.list(params={"customer": customer.id}).data] == [first.id]
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"


def test_it_replays_a_card_error_instead_of_charging_again(client):
    customer = customer_with_card(client, FAILING_CARD)
    invoice = open_invoice(client, customer)

    for _ in range(2):
        with pytest.raises(stripe.CardError):
            client.v1.invoices.pay(invoice.id, options={"idempotency_key": f"invoice:{invoice.id}:pay"})

    assert client.v1.invoices.retrieve(invoice.id).attempt_count == 1


def test_it_refuses_an_idempotency_key_reused_with_other_parameters(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    client.v1.invoices.create(params={"customer": customer.id}, options={"idempotency_key": "invoice:44:create"})

    with pytest.raises(stripe.IdempotencyError) as refused:
        client.v1.invoices.create(
            params={"customer": customer.id, "description": "other"}, options={"idempotency_key": "invoice:44:create"}
        )

    assert refused.value.http_status == 400
    assert len(client.v1.invoices.list(params={"customer": customer.id}).data) == 1


def test_it_scopes_idempotency_keys_per_api_key(stripe_url):
    ours, theirs = make_client(stripe_url), make_client(stripe_url, OTHER_API_KEY)

    one = ours.v1.customers.create(params={"name": "A"}, options={"idempotency_key": "customer:1"})
    other = theirs.v1.customers.create(params={"name": "B"}, options={"idempotency_key": "customer:1"})

    assert other.id != one.id
    assert other.name == "B"


def test_it_lists_invoices_by_customer_status_and_created_window_page_by_page(client):
    customer = client.v1.customers.create(params={"name": "Office"})
    elsewhere = client.v1.customers.create(params={"name": "Other office"})
    drafts = [client.v1.invoices.create(params={"customer": customer.id}) for _ in range(3)]
    finalized = open_invoice(client, customer)
    client.v1.invoices.create(params={"customer": elsewhere.id})
    newest_first = [finalized.id, *reversed([d.id for d in drafts])]

    first_page = client.v1.invoices.list(params={"customer": customer.id, "limit": 2})
    second_page = client.v1.invoices.list(
        params={"customer": customer.id, "limit": 2, "starting_after": first_page.data[-1].id}
    )
    opened = client.v1.invoices.list(params={"customer": customer.id, "status": "open"})
    window = client.v1.invoices.list(params={"customer": customer.id, "created": {"gte": drafts[0].created}})
    future = client.v1.invoices.list(params={"customer": customer.id, "created": {"gt": int(time.time()) + 3600}})
    every = list(client.v1.invoices.list(params={"customer": customer.id, "limit": 1}).auto_paging_iter())

    assert [i.id for i in first_page.data] + [i.id for i in second_page.data] == newest_first
    assert (first_page.has_more, second_page.has_more) == (True, False)
    assert [i.id for i in opened.data] == [finalized.id]
    assert [i.id for i in window.data] == newest_first
    assert future.data == []
    assert [i.id for i in every] == newest_first
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.list(params={"status": "unpaid"})


def test_it_serves_a_fixed_test_account(client):
    account = client.v1.accounts.retrieve_current()

    assert account.object == "account"
    assert account.id.startswith("acct_")
    assert (account.country, account.default_currency) == ("US", "usd")
    assert account.charges_enabled is True
    assert client.v1.accounts.retrieve(account.id).id == account.id


def test_it_serves_the_fields_dj_stripe_reads(client):
    customer = customer_with_card(client)
    invoice = open_invoice(client, customer)
    client.v1.invoices.pay(invoice.id)
    product = client.v1.products.create(params={"name": "Plan"})
    plan = client.v1.plans.create(
        params={"amount": 1000, "currency": "usd", "interval": "month", "product": product.id}
    )
    subscription = client.v1.subscriptions.create(params={"customer": customer.id, "items": [{"plan": plan.id}]})

    # dj-stripe syncs invoices with expand=["discounts", "lines.data.discounts"].
    synced = client.v1.invoices.retrieve(invoice.id, params={"expand": ["discounts", "lines.data.discounts"]})
    intent = client.v1.payment_intents.retrieve(synced.payment_intent)
    charge = client.v1.charges.retrieve(intent.latest_charge["id"])
    item = subscription["items"].data[0]

    assert synced.discounts == [] and synced.lines.data[0].discounts == []
    assert synced.paid is True and synced.lines.data[0].period.start
    assert (charge.invoice, charge.payment_intent, charge.paid) == (invoice.id, intent.id, True)
    assert charge.amount_captured == 12_345
    assert item.subscription == subscription.id
    assert (item.price.object, item.price.unit_amount, item.price.product) == ("price", 1000, product.id)
    assert subscription.default_tax_rates == []
    assert client.v1.products.features.list(product.id).data == []


def test_it_lists_events_newest_first_with_their_request(client):
    customer = customer_with_card(client)
    invoice = client.v1.invoices.create(params={"customer": customer.id}, options={"idempotency_key": "ev:create"})
    client.v1.invoice_items.create(params={"invoice": invoice.id, "amount": 999})
    client.v1.invoices.finalize_invoice(invoice.id)
    client.v1.invoices.pay(invoice.id)

    events = [
        e
        for e in client.v1.events.list(params={"types": ["invoice.*"], "limit": 100}).data
        if e.data.object["id"] == invoice.id
    ]

    assert [e.type for e in events] == [
        "invoice.payment_succeeded",
        "invoice.paid",
        "invoice.finalized",
        "invoice.created",
    ]
    created = events[-1]
    assert created["request"]["idempotency_key"] == "ev:create"  # `.request` is a client method
    assert created["request"]["id"].startswith("req_")
    assert events[0].data.object["status"] == "paid"  # each event carries the object as it was then


def test_it_collects_automatically_when_auto_advance_is_on(client):
    customer = customer_with_card(client)
    invoice = open_invoice(client, customer, auto_advance=True)

    assert invoice.status == "open"
    deadline = time.monotonic() + 5
    while client.v1.invoices.retrieve(invoice.id).status != "paid" and time.monotonic() < deadline:
        time.sleep(0.1)

    paid = client.v1.invoices.retrieve(invoice.id)
    assert (paid.status, paid.attempt_count, paid.auto_advance) == ("paid", 1, False)
    payment = [
        e for e in client.v1.events.list(params={"type": "invoice.paid"}).data if e.data.object["id"] == invoice.id
    ]
    assert payment[0]["request"]["id"] is None  # an automatic attempt, not an API request


class _Receiver(http.server.BaseHTTPRequestHandler):
    deliveries: queue.Queue

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.deliveries.put((self.headers.get("Stripe-Signature"), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def webhook_receiver():
    deliveries: queue.Queue = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"deliveries": deliveries})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stripe/webhook/", deliveries
    finally:
        server.shutdown()
        server.server_close()


def test_it_delivers_signed_invoice_webhooks():
    secret = "whsec_" + "test" * 8
    with run_localstripe() as url, webhook_receiver() as (endpoint, deliveries):
        registration = urllib.parse.urlencode({"url": endpoint, "secret": secret}).encode()
        urllib.request.urlopen(f"{url}/_config/webhooks/ours", data=registration, timeout=5).close()
        client = make_client(url)
        customer = customer_with_card(client)
        invoice = open_invoice(client, customer)
        client.v1.invoices.pay(invoice.id)

        received = {}
        deadline = time.monotonic() + 8
        while not {"invoice.finalized", "invoice.paid", "invoice.payment_succeeded"} <= set(received):
            header, body = deliveries.get(timeout=max(0.1, deadline - time.monotonic()))
            event = stripe.Webhook.construct_event(body.decode(), header, secret, tolerance=300)
            if event.data.object["id"] == invoice.id:
                received[event.type] = (header, body)

    header, body = received["invoice.paid"]
    assert stripe.WebhookSignature.verify_header(body.decode(), header, secret, tolerance=300)
    assert json.loads(body)["data"]["object"]["status"] == "paid"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_" + "wrong" * 6, tolerance=300)


def test_it_listens_on_loopback_only_and_keeps_its_store_in_its_tmpdir(tmp_path):
    with run_localstripe(tmpdir=tmp_path, from_scratch=False) as url:
        customer = make_client(url).v1.customers.create(params={"name": "Kept"})
        port = urllib.parse.urlsplit(url).port
        with pytest.raises(OSError):  # 127.0.0.2 is loopback too, but not the bound address
            socket.create_connection(("127.0.0.2", port), timeout=1).close()

    assert (tmp_path / "localstripe.pickle").is_file()
    with run_localstripe(tmpdir=tmp_path, from_scratch=False) as url:
        assert make_client(url).v1.customers.retrieve(customer.id).name == "Kept"
    with run_localstripe(tmpdir=tmp_path, from_scratch=True) as url, pytest.raises(stripe.InvalidRequestError):
        make_client(url).v1.customers.retrieve(customer.id)


def test_it_searches_customers_by_metadata_and_lists_invoice_lines_page_by_page(client):
    office_id = str(time.time_ns())
    wanted = client.v1.customers.create(params={"name": "Search me", "metadata": {"office_id": office_id}})
    client.v1.customers.create(params={"name": "Not me", "metadata": {"office_id": office_id + "0"}})
    found = client.v1.customers.search(params={"query": f"metadata['office_id']:'{office_id}'"})
    assert [c.id for c in found.data] == [wanted.id] and found.object == "search_result"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.search(params={"query": "name:'Search me'"})  # not a form localstripe knows

    invoice = client.v1.invoices.create(params={"customer": wanted.id, "auto_advance": False})
    for n in range(12):
        client.v1.invoice_items.create(
            params={"customer": wanted.id, "invoice": invoice.id, "amount": 100 + n, "currency": "usd"}
        )
    lines = list(client.v1.invoices.line_items.list(invoice.id, params={"limit": 5}).auto_paging_iter())
    assert len(lines) == 12 and len({line.id for line in lines}) == 12
