"""Stripe-side helpers shared by the webhook, dunning, reconciliation and secrets tests:
point the settings at a localstripe, sign and deliver events like Stripe, talk to
localstripe over HTTP, and build a billed office."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import requests
import stripe
from django.conf import settings as django_settings
from django.test import Client

from audit.models import AuditEvent
from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus, Plan
from billing.services import patient_activate, subscription_create
from billing.stripe.gateway import STRIPE_API_VERSION, Gateway
from billing.stripe.push import customer_ensure, invoice_push
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan
from offices.models import CollectionMethod, Office

CHI = ZoneInfo("America/Chicago")
WEBHOOK = "/stripe/webhook/"


@contextlib.contextmanager
def localstripe_env(settings: Any, url: str) -> Iterator[str]:
    """Point the gateway and dj-stripe at a localstripe, with a fresh webhook secret and
    invoice-number prefix (Stripe refuses a number already used)."""
    settings.STRIPE_API_BASE = url
    settings.STRIPE_WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"
    settings.STRIPE_WEBHOOK_SECRET_NEXT = ""
    settings.INVOICE_NUMBER_PREFIX = f"T{uuid.uuid4().hex[:6].upper()}"
    previous = stripe.api_base
    stripe.api_base = url  # dj-stripe uses the module-level client
    try:
        yield url
    finally:
        stripe.api_base = previous


def sign(body: bytes, secret: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def deliver(
    body: bytes | dict[str, Any],
    *,
    secret: str | None = None,
    t: int | None = None,
    header: str | None = None,
    http: Client | None = None,
    **extra: Any,
):
    raw = body if isinstance(body, bytes) else json.dumps(body, indent=2, sort_keys=True).encode()
    if header is None:
        header = sign(raw, secret or django_settings.STRIPE_WEBHOOK_SECRET, t)
    return (http or Client()).post(
        WEBHOOK, data=raw, content_type="application/json; charset=utf-8", HTTP_STRIPE_SIGNATURE=header, **extra
    )


def stripe_get(base: str, path: str, /, **params: Any) -> dict[str, Any]:
    response = requests.get(
        f"{base}{path}",
        params=params,
        headers={"Authorization": f"Bearer {django_settings.STRIPE_SECRET_KEY}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def stripe_post(base: str, path: str, /, **data: Any) -> dict[str, Any]:
    response = requests.post(
        f"{base}{path}",
        data=data,
        headers={"Authorization": f"Bearer {django_settings.STRIPE_SECRET_KEY}"},
        timeout=10,
    )
    if response.status_code >= 400 and response.status_code != 402:
        raise AssertionError(f"{path}: {response.status_code} {response.text}")
    return response.json() if response.content else {}


def events_of(url: str, customer_id: str, types: set[str] | None = None) -> list[dict[str, Any]]:
    """Every event localstripe recorded about this customer's objects, oldest first."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = stripe_get(url, "/v1/events", **params)
        for event in page["data"]:
            obj = event["data"]["object"]
            owner = obj.get("customer") if obj.get("object") != "customer" else obj.get("id")
            if isinstance(owner, dict):
                owner = owner.get("id")
            if owner == customer_id and (types is None or event["type"] in types):
                found.append(event)
        if not page["has_more"]:
            break
        params["starting_after"] = page["data"][-1]["id"]
    return sorted(found, key=lambda e: (e["created"], e["id"]))


def wait_for(condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class CountingSession(requests.Session):
    """A requests session that records every HTTP request the gateway makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.calls.append((str(method).upper(), urlparse(str(url)).path))
        return super().request(method, url, *args, **kwargs)


def counting_gateway(url: str) -> tuple[Gateway, CountingSession]:
    session = CountingSession()
    http_client = stripe.RequestsClient(timeout=30, session=session)
    stripe_client = stripe.StripeClient(
        django_settings.STRIPE_SECRET_KEY,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": url},
        max_network_retries=2,
        http_client=http_client,
    )
    return Gateway(stripe_client), session


def billed_office(
    *, patients: int = 3, collection_method: str = CollectionMethod.CHARGE_AUTOMATICALLY, name: str | None = None
) -> Office:
    """Spec §11 example 1 shape: subscribed 2026-03-10, first cycle finalized 2026-04-10
    (a setup-fee invoice of 50000 and a cycle invoice of 15000 with the minimum)."""
    if not Plan.objects.filter(code="professional").exists():
        professional_plan()
    kwargs: dict[str, Any] = {"timezone": "America/Chicago", "collection_method": collection_method}
    if name:
        kwargs["name"] = name
    office = OfficeFactory(**kwargs)
    start = datetime(2026, 3, 10, 14, tzinfo=CHI)
    with at(start - timedelta(days=1)):
        for _ in range(patients):
            patient_activate(patient=PatientFactory(office=office))
    with at(start):
        subscription_create(office=office, plan_code="professional")
    with at(datetime(2026, 4, 10, 1, tzinfo=CHI)):
        billing_run()
    office.refresh_from_db()
    return office


def with_card(url: str, office: Office, gateway: Gateway, card: str = "pm_card_visa") -> str:
    """Give the office's Stripe customer a default card (what a Stripe-hosted page does)."""
    customer_id = customer_ensure(office=office, gateway=gateway)
    method = stripe_post(url, f"/v1/payment_methods/{card}/attach", customer=customer_id)
    stripe_post(url, f"/v1/customers/{customer_id}", **{"invoice_settings[default_payment_method]": method["id"]})
    return customer_id


def finalized(office: Office) -> list[Invoice]:
    return list(Invoice.objects.filter(office=office).exclude(status=InvoiceStatus.DRAFT).order_by("id"))


def push_all(office: Office, gateway: Gateway) -> list[Invoice]:
    pushed = [invoice_push(invoice_id=invoice.pk, gateway=gateway) for invoice in finalized(office)]
    office.refresh_from_db()  # the push stored the Stripe customer id
    return pushed


def pushed_cycle(gateway: Gateway, patients: int = 3) -> Invoice:
    """A billed office's finalized cycle invoice, pushed (open in Stripe)."""
    office = billed_office(patients=patients)
    push_all(office, gateway)
    return Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)


def stripe_status(url: str, stripe_invoice_id: str) -> str:
    return str(stripe_get(url, f"/v1/invoices/{stripe_invoice_id}")["status"])


def audits(action: str, **filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))


def synthetic_event(invoice: Invoice, event_type: str = "invoice.paid", **overrides: Any) -> dict[str, Any]:
    """An event shaped like Stripe's, about one of our pushed invoices."""
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {
            "object": {
                "id": invoice.stripe_invoice_id,
                "object": "invoice",
                "customer": invoice.office.payment_provider_customer_id,
                "metadata": {"invoice_id": str(invoice.pk), "office_id": str(invoice.office_id)},
            }
        },
    }
    event.update(overrides)
    return event
