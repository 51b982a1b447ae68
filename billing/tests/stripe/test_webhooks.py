"""`POST /stripe/webhook/`: signature, once per event id, reactions, dj-stripe mirror.

Everything Stripe-side runs through our extended localstripe over HTTP: invoices are
pushed with the real gateway, localstripe collects them and records events, and the
tests deliver those events to the view signed like Stripe does (HMAC-SHA256 of
"t.body" with the webhook secret)."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import stripe
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.urls import resolve

from billing.models import Invoice, InvoiceKind, InvoiceStatus, PushState, StripeEvent, StripeEventStatus
from billing.stripe.gateway import Gateway, client
from billing.stripe.push import customer_ensure, invoice_push, stripe_items
from billing.stripe.reconcile import reconcile_stripe
from billing.stripe.webhooks import signature_verify
from billing.tests.support.factories import at
from billing.tests.support.localstripe_server import free_port, run_localstripe
from billing.tests.support.stripe_helpers import (
    CHI,
    WEBHOOK,
    audits,
    billed_office,
    counting_gateway,
    deliver,
    events_of,
    finalized,
    localstripe_env,
    push_all,
    sign,
    stripe_get,
    stripe_post,
    stripe_status,
    synthetic_event,
    wait_for,
    with_card,
)
from offices.models import CollectionMethod, Office, SubscriptionStatus

pytestmark = pytest.mark.django_db(transaction=True)


# --- Fixtures (the helpers are in billing/tests/support/stripe_helpers.py) --------------


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def stripe_env(settings, stripe_url) -> Iterator[str]:
    with localstripe_env(settings, stripe_url):
        yield stripe_url


# --- Full cycle ---------------------------------------------------------------------------


def test_it_collects_a_full_cycle_and_every_stripe_invoice_total_equals_local(stripe_env):
    url = stripe_env
    office = billed_office(patients=40)
    gateway, session = counting_gateway(url)
    with_card(url, office, gateway)
    per_push: dict[str, int] = {}
    for invoice in finalized(office):
        before = len(session.calls)
        pushed = invoice_push(invoice_id=invoice.pk, gateway=gateway)
        calls = session.calls[before:]
        per_push[pushed.number or ""] = len(calls)
        # Writes: create + one per item group + finalize; reads: the retrieve (and a
        # resume check by listing, where the push does one), never one per patient.
        posts = [path for method, path in calls if method == "POST"]
        assert len(posts) == 2 + len(stripe_items(invoice))
        assert len(calls) - len(posts) <= 2
        assert pushed.push_state == PushState.PUSHED
    pushed = finalized(office)
    for invoice in pushed:
        wait_for(lambda inv=invoice: stripe_status(url, inv.stripe_invoice_id) == "paid", what="automatic collection")

    events = events_of(url, office.payment_provider_customer_id)
    types = {e["type"] for e in events}
    assert {"invoice.finalized", "invoice.paid", "invoice.payment_succeeded"} <= types
    for event in events:
        response = deliver(event)
        assert response.status_code == 200, response.content

    for invoice in finalized(office):
        remote = stripe_get(url, f"/v1/invoices/{invoice.stripe_invoice_id}")
        assert remote["total"] == invoice.total_cents
        assert invoice.status == InvoiceStatus.PAID and invoice.paid_at is not None
        assert remote["number"] == invoice.number
    assert sorted(i.total_cents for i in finalized(office)) == [40 * 450, 50000]
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE and office.past_due_since is None
    assert StripeEvent.objects.filter(status=StripeEventStatus.PROCESSED).count() == len(events)
    assert StripeEvent.objects.filter(mirrored=True).count() == len(events)
    assert len(audits("webhook.received")) == len(events)
    assert len(audits("payment.succeeded", office_id=office.pk)) == 2
    # dj-stripe's mirror followed: its Invoice rows are the Stripe invoices, paid.
    from djstripe.models import Invoice as MirrorInvoice

    mirrored = {m.id: m.stripe_data["status"] for m in MirrorInvoice.objects.all()}
    assert {inv.stripe_invoice_id: "paid" for inv in finalized(office)}.items() <= mirrored.items()
    assert not reconcile_stripe(gateway=gateway).mismatches
    print(f"\nStripe requests per invoice push: {per_push}")


def test_it_processes_events_that_localstripe_itself_delivers(settings, live_server):
    """localstripe's own signed deliveries (t = event time), to a live server."""
    with run_localstripe() as url:
        settings.STRIPE_API_BASE = url
        settings.STRIPE_WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"
        settings.INVOICE_NUMBER_PREFIX = f"L{uuid.uuid4().hex[:6].upper()}"
        previous, stripe.api_base = stripe.api_base, url
        try:
            stripe_post(
                url,
                "/_config/webhooks/ours",
                url=f"{live_server.url}{WEBHOOK}",
                secret=settings.STRIPE_WEBHOOK_SECRET,
            )
            office = billed_office(patients=2)
            gateway = Gateway(client(api_base=url))
            with_card(url, office, gateway)
            push_all(office, gateway)
            wait_for(
                lambda: StripeEvent.objects.filter(type="invoice.paid", status="processed").count() == 2,
                timeout=20,
                what="invoices paid through localstripe's webhook deliveries",
            )
            # Let every delivery land before the database is emptied.
            everything = len(stripe_get(url, "/v1/events", limit=100)["data"])
            wait_for(lambda: StripeEvent.objects.exclude(status="received").count() == everything, what="all events")
        finally:
            stripe.api_base = previous
    assert {i.status for i in finalized(office)} == {InvoiceStatus.PAID}
    assert not audits("webhook.rejected")
    assert StripeEvent.objects.filter(type="invoice.paid").count() == 2


# --- Rejections -----------------------------------------------------------------------------


@pytest.fixture
def open_invoice(stripe_env) -> Invoice:
    office = billed_office(patients=1, collection_method=CollectionMethod.SEND_INVOICE)
    gateway = Gateway(client(api_base=stripe_env))
    push_all(office, gateway)
    invoice = finalized(office)[0]
    stripe_post(stripe_env, f"/v1/invoices/{invoice.stripe_invoice_id}/pay", paid_out_of_band="true")
    return invoice


def _rejection_cases() -> dict[str, Callable[[bytes, str], dict[str, Any]]]:
    return {
        "bad signature": lambda body, secret: {"header": sign(body, secret).replace("v1=", "v1=00")},
        "tampered body": lambda body, secret: {"header": sign(body, secret), "body": body.replace(b"paid", b"void")},
        "stale timestamp": lambda body, secret: {"header": sign(body, secret, int(time.time()) - 301)},
        "future timestamp": lambda body, secret: {"header": sign(body, secret, int(time.time()) + 301)},
        "wrong secret": lambda body, secret: {"header": sign(body, "whsec_someone_else")},
        "no header": lambda body, secret: {"header": ""},
        "malformed header": lambda body, secret: {"header": "t=abc,v1="},
        "huge timestamp": lambda body, secret: {"header": "t=" + "9" * 5000 + ",v1=" + "0" * 64},
        "non-ASCII signature": lambda body, secret: {"header": f"t={int(time.time())},v1=\u00e9\u00e9"},
        "two timestamps": lambda body, secret: {"header": sign(body, secret) + f",t={int(time.time())}"},
        "v0 only": lambda body, secret: {"header": sign(body, secret).replace("v1=", "v0=")},
        "not JSON": lambda body, secret: {"body": b"\x00not json {" + body, "sign": True},
        "JSON but not an event": lambda body, secret: {"body": b'{"object": "invoice", "id": "in_1"}', "sign": True},
        "3 MB body": lambda body, secret: {"body": body + b" " * (3 * 1024 * 1024), "sign": True},
    }


@pytest.mark.parametrize("case", list(_rejection_cases()))
def test_it_rejects_bad_deliveries_and_processes_nothing(case, open_invoice):
    secret = django_settings.STRIPE_WEBHOOK_SECRET
    payload = synthetic_event(open_invoice, "invoice.paid")
    body = json.dumps(payload).encode()
    spec = _rejection_cases()[case](body, secret)
    raw = spec.get("body", body)
    header = sign(raw, secret) if spec.get("sign") else spec["header"]

    response = deliver(raw, header=header, REMOTE_ADDR="203.0.113.9")

    assert 400 <= response.status_code < 500
    assert response.status_code == (413 if case == "3 MB body" else 400)
    assert not StripeEvent.objects.exists()
    assert Invoice.objects.get(pk=open_invoice.pk).status == InvoiceStatus.OPEN
    from djstripe.models import Event as MirrorEvent
    from djstripe.models import WebhookEventTrigger

    assert not MirrorEvent.objects.exists() and not WebhookEventTrigger.objects.exists()
    [rejected] = audits("webhook.rejected")
    assert rejected.source_ip == "203.0.113.9" and rejected.outcome == "denied" and rejected.reason
    stored = json.dumps(rejected.data) + rejected.reason
    assert payload["id"] not in stored
    assert open_invoice.stripe_invoice_id not in stored and "metadata" not in stored
    assert not audits("webhook.received")

    # The same event, signed right, is applied: the rejection was the only thing in the way.
    assert deliver(payload).status_code == 200
    assert Invoice.objects.get(pk=open_invoice.pk).status == InvoiceStatus.PAID


def test_it_refuses_a_large_body_before_reading_it(open_invoice):
    body = b"{" + b" " * (django_settings.STRIPE_WEBHOOK_MAX_BODY_BYTES + 1) + b"}"
    response = deliver(body)
    assert response.status_code == 413
    [rejected] = audits("webhook.rejected")
    assert rejected.reason == "body too large" and rejected.data["bytes"] is None


def test_it_refuses_get_and_other_methods(open_invoice):
    assert Client().get(WEBHOOK).status_code == 405
    assert Client().put(WEBHOOK, data=b"{}", content_type="application/json").status_code == 405


def test_it_refuses_an_event_of_the_other_mode(open_invoice):
    response = deliver(synthetic_event(open_invoice, livemode=True))
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()
    assert audits("webhook.rejected")[0].reason == "livemode does not match this deployment's key"


def test_it_accepts_the_next_secret_during_rotation(settings, open_invoice):
    settings.STRIPE_WEBHOOK_SECRET_NEXT = f"whsec_{secrets.token_hex(16)}"
    first = synthetic_event(open_invoice, "invoice.finalized")
    assert deliver(first, secret=settings.STRIPE_WEBHOOK_SECRET_NEXT).status_code == 200
    # Stripe signs with both secrets while it rolls one over: several v1 in one header.
    second = synthetic_event(open_invoice, "invoice.paid")
    raw = json.dumps(second).encode()
    t = int(time.time())
    old = sign(raw, "whsec_already_expired", t).split(",")[1]
    header = f"{sign(raw, settings.STRIPE_WEBHOOK_SECRET_NEXT, t)},{old}"
    assert deliver(raw, header=header).status_code == 200
    assert [a.data["secret"] for a in audits("webhook.received")] == ["next", "next"]
    # Once the new secret is the only one, the old one is refused.
    settings.STRIPE_WEBHOOK_SECRET, settings.STRIPE_WEBHOOK_SECRET_NEXT = settings.STRIPE_WEBHOOK_SECRET_NEXT, ""
    assert deliver(synthetic_event(open_invoice), secret="whsec_already_expired").status_code == 400


def test_it_agrees_with_stripe_pythons_signature_scheme(settings):
    settings.STRIPE_WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"
    body = b'{"id": "evt_1", "object": "event"}'
    t = int(time.time())
    theirs = (
        f"t={t},v1={stripe.WebhookSignature._compute_signature(f'{t}.{body.decode()}', settings.STRIPE_WEBHOOK_SECRET)}"
    )
    assert signature_verify(payload=body, header=theirs, now=time.time(), tolerance=300).secret == "current"
    assert stripe.WebhookSignature.verify_header(
        body.decode(), sign(body, settings.STRIPE_WEBHOOK_SECRET, t), settings.STRIPE_WEBHOOK_SECRET, 300
    )


def test_it_ignores_djstripes_secret_header_even_in_debug(settings, open_invoice):
    settings.DEBUG = True
    payload = synthetic_event(open_invoice, "invoice.paid")
    raw = json.dumps(payload).encode()
    attacker = "whsec_attacker_chosen"
    response = deliver(raw, header=sign(raw, attacker), HTTP_X_DJSTRIPE_WEBHOOK_SECRET=attacker)
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()
    from djstripe.models import WebhookEventTrigger

    assert not WebhookEventTrigger.objects.exists()


def test_it_routes_only_our_view_and_not_djstripes(open_invoice):
    from billing.stripe.webhooks import stripe_webhook

    assert resolve(WEBHOOK).func is stripe_webhook
    payload = synthetic_event(open_invoice, "invoice.paid")
    raw = json.dumps(payload).encode()
    for path in (f"/stripe/webhook/{uuid.uuid4()}/", "/stripe/webhook/djstripe/", "/webhook/"):
        response = Client().post(
            path, data=raw, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(raw, "whsec_x")
        )
        assert response.status_code == 404, path


# --- Once per event id ---------------------------------------------------------------------


def test_it_records_an_event_once_and_answers_duplicates_without_reacting(open_invoice):
    payload = synthetic_event(open_invoice, "invoice.paid")
    first = deliver(payload)
    again = deliver(payload)
    assert first.json()["status"] == "processed" and again.json()["status"] == "duplicate"
    row = StripeEvent.objects.get()
    assert (row.event_id, row.deliveries, row.attempts, row.status) == (payload["id"], 2, 1, "processed")
    assert row.office_id == open_invoice.office_id and row.outcome == "paid"
    assert len(audits("webhook.received")) == 1 and len(audits("webhook.duplicate")) == 1
    assert len(audits("payment.succeeded")) == 1


def test_it_processes_an_event_delivered_50_times_concurrently_once(on_postgres, stripe_env):
    url = stripe_env
    office = billed_office(patients=2)
    gateway = Gateway(client(api_base=url))
    with_card(url, office, gateway, card="pm_card_chargeCustomerFail")
    push_all(office, gateway)
    invoice = finalized(office)[0]
    wait_for(
        lambda: events_of(url, office.payment_provider_customer_id, {"invoice.payment_failed"}),
        what="the failed automatic payment",
    )
    event = next(
        e
        for e in events_of(url, office.payment_provider_customer_id, {"invoice.payment_failed"})
        if e["data"]["object"]["id"] == invoice.stripe_invoice_id
    )
    raw = json.dumps(event, indent=2, sort_keys=True).encode()
    header = sign(raw, django_settings.STRIPE_WEBHOOK_SECRET)
    barrier = threading.Barrier(50)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            http = Client()
            barrier.wait()
            statuses.append(deliver(raw, header=header, http=http).status_code)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(50)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    assert not errors, errors
    assert statuses == [200] * 50
    row = StripeEvent.objects.get(event_id=event["id"])
    assert (row.deliveries, row.attempts, row.status, row.outcome) == (50, 1, "processed", "past_due")
    assert len(audits("webhook.received")) == 1
    assert len(audits("webhook.duplicate")) == 49
    assert len(audits("payment.failed", target_id=str(invoice.pk))) == 1
    assert len(audits("invoice.past_due", target_id=str(invoice.pk))) == 1
    assert len(audits("subscription.past_due", office_id=office.pk)) == 1
    invoice.refresh_from_db()
    office.refresh_from_db()
    assert invoice.past_due_at is not None and office.subscription_status == SubscriptionStatus.PAST_DUE
    assert office.past_due_since == invoice.past_due_at
    print(f"\n50 concurrent deliveries of one event: {elapsed:.2f} s, 1 reaction, 49 duplicates")


def test_it_retries_an_event_whose_reaction_failed(settings, open_invoice):
    payload = synthetic_event(open_invoice, "invoice.paid")
    good_base = settings.STRIPE_API_BASE
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"  # Stripe unreachable for a moment
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    failed = deliver(payload)
    assert failed.status_code == 500
    row = StripeEvent.objects.get()
    assert row.status == StripeEventStatus.FAILED and row.error
    assert Invoice.objects.get(pk=open_invoice.pk).status == InvoiceStatus.OPEN
    settings.STRIPE_API_BASE = good_base
    retried = deliver(payload)  # Stripe delivers again after a non-2xx answer
    assert retried.status_code == 200 and retried.json()["status"] == "processed"
    row.refresh_from_db()
    assert (row.status, row.attempts, row.deliveries) == ("processed", 2, 2)
    assert Invoice.objects.get(pk=open_invoice.pk).status == InvoiceStatus.PAID
    assert len(audits("webhook.received")) == 1 and len(audits("webhook.failed")) == 1


# --- Order does not matter --------------------------------------------------------------------


ORDERED_TYPES = ("invoice.finalized", "invoice.payment_failed", "invoice.paid")


def _fail_then_pay(url: str, with_payment: bool) -> tuple[Office, Invoice, dict[str, dict[str, Any]]]:
    office = billed_office(patients=1)
    gateway = Gateway(client(api_base=url))
    customer_id = with_card(url, office, gateway, card="pm_card_chargeCustomerFail")
    invoice = invoice_push(invoice_id=finalized(office)[0].pk, gateway=gateway)  # the first cycle
    wait_for(lambda: events_of(url, customer_id, {"invoice.payment_failed"}), what="the failed payment")
    if with_payment:
        with_card(url, office, gateway)
        stripe_post(url, f"/v1/invoices/{invoice.stripe_invoice_id}/pay")
    events = {
        e["type"]: e
        for e in events_of(url, customer_id, set(ORDERED_TYPES))
        if e["data"]["object"]["id"] == invoice.stripe_invoice_id
    }
    return office, invoice, events


@pytest.mark.parametrize("order", list(itertools.permutations(ORDERED_TYPES)), ids="-".join)
def test_it_ends_paid_and_active_whatever_order_the_events_arrive_in(order, stripe_env):
    office, invoice, events = _fail_then_pay(stripe_env, with_payment=True)
    assert set(events) == set(ORDERED_TYPES)
    for event_type in order:
        assert deliver(events[event_type]).status_code == 200
    invoice.refresh_from_db()
    office.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID and invoice.past_due_at is None
    assert office.subscription_status == SubscriptionStatus.ACTIVE and office.past_due_since is None


@pytest.mark.parametrize("order", list(itertools.permutations(ORDERED_TYPES[:2])), ids="-".join)
def test_it_ends_past_due_whatever_order_a_failure_arrives_in(order, stripe_env):
    office, invoice, events = _fail_then_pay(stripe_env, with_payment=False)
    for event_type in order:
        assert deliver(events[event_type]).status_code == 200
    invoice.refresh_from_db()
    office.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and invoice.past_due_at is not None
    assert office.subscription_status == SubscriptionStatus.PAST_DUE
    assert office.past_due_since == invoice.past_due_at


def test_it_applies_void_and_uncollectible_from_stripe(stripe_env):
    url = stripe_env
    office = billed_office(patients=1, collection_method=CollectionMethod.SEND_INVOICE)
    gateway = Gateway(client(api_base=url))
    cycle, setup_fee = push_all(office, gateway)  # the cycle's draft opened first
    assert setup_fee.total_cents == 50000
    stripe_post(url, f"/v1/invoices/{setup_fee.stripe_invoice_id}/void")
    stripe_post(url, f"/v1/invoices/{cycle.stripe_invoice_id}/mark_uncollectible")
    for event in events_of(url, office.payment_provider_customer_id):
        assert deliver(event).status_code == 200
    setup_fee.refresh_from_db()
    cycle.refresh_from_db()
    assert setup_fee.status == InvoiceStatus.VOID and setup_fee.voided_at is not None
    assert cycle.status == InvoiceStatus.UNCOLLECTIBLE and cycle.marked_uncollectible_at is not None
    assert audits("invoice.voided", target_id=str(setup_fee.pk))
    assert audits("invoice.marked_uncollectible", target_id=str(cycle.pk))
    # A late event about the earlier open state changes nothing (statuses only move forward).
    stale = synthetic_event(cycle, "invoice.finalized")
    assert deliver(stale).json()["outcome"].startswith("no change")
    assert Invoice.objects.get(pk=cycle.pk).status == InvoiceStatus.UNCOLLECTIBLE


def test_it_records_unknown_types_and_foreign_invoices_without_reacting(stripe_env):
    office = billed_office(patients=1)
    gateway = Gateway(client(api_base=stripe_env))
    customer_ensure(office=office, gateway=gateway)
    customer_created = events_of(stripe_env, office.payment_provider_customer_id, {"customer.created"})[0]
    response = deliver(customer_created)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored: type not handled"
    foreign = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "created": int(time.time()),
        "livemode": False,
        "type": "invoice.paid",
        "data": {"object": {"id": "in_not_ours", "object": "invoice", "customer": "cus_other", "metadata": {}}},
    }
    response = deliver(foreign)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored: not one of our invoices"
    assert StripeEvent.objects.filter(status=StripeEventStatus.PROCESSED).count() == 2


def test_a_djstripe_failure_does_not_fail_the_reaction(open_invoice):
    stripe.api_base = f"http://127.0.0.1:{free_port()}"  # dj-stripe cannot reach Stripe; we can
    payload = synthetic_event(open_invoice, "invoice.paid")
    response = deliver(payload)
    assert response.status_code == 200 and response.json()["outcome"] == "paid"
    row = StripeEvent.objects.get()
    assert row.status == "processed" and not row.mirrored and row.mirror_error
    [failed] = audits("stripe.mirror_failed")
    assert failed.outcome == "failure"
    assert Invoice.objects.get(pk=open_invoice.pk).status == InvoiceStatus.PAID


def test_it_pays_one_off_invoices_by_webhook_too(stripe_env):
    """One-off invoices are paid by webhook like cycle invoices."""
    from billing.services import invoice_create_one_off
    from billing.tests.support.factories import operator

    office = billed_office(patients=1)
    with at(datetime(2026, 4, 11, tzinfo=CHI)):
        one_off = invoice_create_one_off(
            office=office, lines=[{"description": "Training session", "amount_cents": 12000}], actor=operator()
        )
    gateway = Gateway(client(api_base=stripe_env))
    with_card(stripe_env, office, gateway)
    pushed = invoice_push(invoice_id=one_off.pk, gateway=gateway)
    assert pushed.kind == InvoiceKind.ONE_OFF
    wait_for(lambda: stripe_status(stripe_env, pushed.stripe_invoice_id) == "paid", what="collection")
    for event in events_of(stripe_env, office.payment_provider_customer_id, {"invoice.paid"}):
        deliver(event)
    assert Invoice.objects.get(pk=one_off.pk).status == InvoiceStatus.PAID
