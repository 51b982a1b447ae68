"""Pushing invoices to Stripe through a faulty network (spec §8: every POST carries an
idempotency key derived from the local invoice and step; an outage leaves the invoice with
a pending push that a retry completes; never a half-made or duplicate Stripe invoice).

The real stripe-python client talks to our extended localstripe through a scripted fault
proxy (billing/tests/support/fault_proxy.py) that records every request with its Idempotency-Key.
Timeouts are short (1 s) and stripe-python retries twice, so a fault on every attempt of
one call takes three scripted faults. Checks read Stripe directly, not through the proxy."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus, Plan, PushState
from billing.services import patient_activate, subscription_create
from billing.stripe.gateway import Gateway, Transient, client
from billing.stripe.push import invoice_push, stripe_items
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, professional_plan
from billing.tests.support.fault_proxy import Fault, Record, run_fault_proxy
from billing.tests.support.localstripe_server import run_localstripe
from offices.models import Office

pytestmark = pytest.mark.django_db(transaction=True)
CHI = ZoneInfo("America/Chicago")
ATTEMPTS = 3  # one call: the first attempt and 2 retries (STRIPE_MAX_NETWORK_RETRIES, STRIPE_RATE_LIMITED_RETRIES)
CELERY_RETRIES = 3  # further invoice_push calls a test allows, as Celery's retries would make

# The four Stripe writes of a push: (method, path regex).
STEPS: dict[str, tuple[str, str]] = {
    "customer_create": ("POST", r"/v1/customers"),
    "invoice_create": ("POST", r"/v1/invoices"),
    "item_create": ("POST", r"/v1/invoiceitems"),
    "finalize": ("POST", r"/v1/invoices/[^/]+/finalize"),
}
# Faults retried (with the same key) inside one call: by stripe-python itself, and 429s by
# the gateway (billing/stripe/gateway.py:PacedRequestsClient), with or without Stripe-Should-Retry.
RETRIED_BY_CLIENT = [
    Fault.DELAY,
    Fault.ERROR_500,
    Fault.RATE_LIMITED,
    Fault.RATE_LIMITED_RETRY,
    Fault.RESET,
    Fault.DROP,
]


@pytest.fixture(scope="module")
def stripe_url():
    with run_localstripe() as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_number_prefix(settings):
    # One localstripe serves the module while the database is emptied between tests, and
    # Stripe refuses a number already used: each test gets its own prefix.
    settings.INVOICE_NUMBER_PREFIX = f"F{uuid.uuid4().hex[:6].upper()}"


@pytest.fixture(autouse=True)
def short_timeouts(settings):
    settings.STRIPE_READ_TIMEOUT_SECONDS = 1
    settings.STRIPE_CONNECT_TIMEOUT_SECONDS = 1
    settings.STRIPE_MAX_NETWORK_RETRIES = 2
    settings.STRIPE_RATE_LIMITED_RETRIES = 2


@pytest.fixture
def proxy(stripe_url):
    with run_fault_proxy(stripe_url, delay_seconds=5.0) as running:
        yield running


@pytest.fixture
def gateway(proxy, short_timeouts):
    return Gateway(client(api_base=proxy.url))


@pytest.fixture
def direct(stripe_url, short_timeouts):
    """A client that bypasses the proxy: what Stripe really holds."""
    return client(api_base=stripe_url)


def billed_office(*, patients: int) -> Office:
    """`patients` active before subscribing; one cycle billed: a setup-fee invoice and a
    cycle invoice of `patients` recurring lines at 450 plus, below 15000, a minimum
    adjustment line."""
    if not Plan.objects.filter(code="professional").exists():  # several offices per test
        professional_plan()
    office = OfficeFactory(timezone="America/Chicago")
    start = datetime(2026, 3, 10, 14, tzinfo=CHI)
    with at(start - timedelta(days=1)):
        for _ in range(patients):
            patient_activate(patient=PatientFactory(office=office))
    with at(start):
        subscription_create(office=office, plan_code="professional")
    with at(datetime(2026, 4, 10, 1, tzinfo=CHI)):
        billing_run(office_ids=[office.pk])
    return office


def finalized(office: Office) -> tuple[Invoice, Invoice]:
    """The office's (cycle, setup fee) invoices, both finalized and waiting for a push."""
    cycle = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    setup = Invoice.objects.exclude(pk=cycle.pk).get(office=office, status=InvoiceStatus.OPEN)
    assert cycle.push_state == PushState.PENDING and setup.push_state == PushState.PENDING
    return cycle, setup


def expected_key(step: str, office: Office, invoice: Invoice) -> str:
    return {
        "customer_create": f"office:{office.pk}:customer",
        "invoice_create": f"invoice:{invoice.pk}:create",
        "item_create": f"invoice:{invoice.pk}:item:",  # a prefix: the first item's key follows
        "finalize": f"invoice:{invoice.pk}:finalize",
    }[step]


def push_until_done(invoice: Invoice, gateway: Gateway) -> tuple[Invoice, list[Exception]]:
    """invoice_push, retried after a Transient error like the Celery task would."""
    errors: list[Exception] = []
    for _ in range(1 + CELERY_RETRIES):
        try:
            return invoice_push(invoice_id=invoice.pk, gateway=gateway), errors
        except Transient as exc:
            local = Invoice.objects.get(pk=invoice.pk)
            assert local.push_state == PushState.PENDING, "a transient failure must leave the push pending"
            errors.append(exc)
    pytest.fail(f"not pushed after {1 + CELERY_RETRIES} calls: {errors!r}")


def same_key(log: list[Record], key: str) -> list[Record]:
    return [record for record in log if record.idempotency_key == key]


def assert_every_write_is_keyed(log: list[Record], office: Office, invoices: list[Invoice]) -> None:
    """Every POST carries one of our keys, and each key names one endpoint only."""
    allowed = (f"office:{office.pk}:customer", *(f"invoice:{i.pk}:" for i in invoices))
    endpoint_of: dict[str, str] = {}
    for record in log:
        if record.method != "POST":
            continue
        assert record.idempotency_key, f"unkeyed write: {record}"
        assert record.idempotency_key.startswith(allowed), f"not our key: {record.idempotency_key}"
        endpoint = f"{record.method} {record.path}"
        assert endpoint_of.setdefault(record.idempotency_key, endpoint) == endpoint
    # Stripe acted at most once per key: every later delivery was a replay.
    executed = Counter(r.idempotency_key for r in log if r.method == "POST" and r.reached_stripe and not r.replayed)
    assert all(n == 1 for n in executed.values()), executed


def assert_one_stripe_invoice_each(direct, office: Office, invoices: list[Invoice]) -> None:
    office.refresh_from_db()
    customers = [
        c["id"]
        for c in direct.v1.customers.list(params={"limit": 100}).auto_paging_iter()
        if c["metadata"].to_dict().get("office_id") == str(office.pk)
    ]
    assert customers == [office.payment_provider_customer_id], "one Stripe customer per office"
    remote = list(Gateway(direct).invoices_list(params={"customer": customers[0], "limit": 100}))
    per_local = Counter(r["metadata"].to_dict().get("invoice_id") for r in remote)
    assert per_local == Counter({str(i.pk): 1 for i in invoices}), "one Stripe invoice per local invoice"
    for invoice in invoices:
        local = Invoice.objects.get(pk=invoice.pk)
        (twin,) = [r for r in remote if r["id"] == local.stripe_invoice_id]
        assert local.push_state == PushState.PUSHED and local.push_error == ""
        assert twin["total"] == local.total_cents and twin["number"] == local.number
        assert twin["status"] in ("open", "paid")
        assert len(twin["lines"]["data"]) == len(stripe_items(local))


# --- one fault, healed by stripe-python's own retry -----------------------------------------


# One test with a subtest per (fault, step): each case gets its own office, and on
# PostgreSQL every transactional test pays a flush of the whole database (seconds).
def test_it_retries_a_single_fault_with_the_same_key_within_one_push(proxy, gateway, direct, subtests):
    for fault in RETRIED_BY_CLIENT:
        for step in STEPS:
            with subtests.test(fault=str(fault), step=step):
                single_fault_on(step, fault, proxy, gateway, direct)


def single_fault_on(step: str, fault: Fault, proxy, gateway: Gateway, direct) -> None:
    office = billed_office(patients=1)
    cycle, setup = finalized(office)
    mark = proxy.mark()
    proxy.script(*STEPS[step], fault)

    pushed = invoice_push(invoice_id=cycle.pk, gateway=gateway)  # no error: the client's retry healed it
    assert pushed.push_state == PushState.PUSHED and pushed.push_attempts == 1
    invoice_push(invoice_id=setup.pk, gateway=gateway)  # the office's customer is reused
    proxy.settle()  # a held (delayed) original lands after its retry

    log = proxy.since(mark)
    (hit,) = [r for r in log if r.fault == fault]
    assert hit.idempotency_key and hit.idempotency_key.startswith(expected_key(step, office, cycle))
    attempts = same_key(log, hit.idempotency_key)
    assert [r.fault for r in attempts] == [fault, Fault.PASS], "one retry, with the first attempt's key"
    first, retry = attempts
    assert (retry.method, retry.path) == (first.method, first.path) and retry.status == 200
    if fault == Fault.DROP:  # Stripe did it the first time; the retry only replays the answer
        assert first.upstream_status == 200 and not first.replayed and first.status is None
        assert retry.replayed
    elif fault == Fault.DELAY:  # the retry did it; the late original only replays it
        assert not retry.replayed and first.upstream_status == 200 and first.replayed
    else:  # never reached Stripe
        assert not first.reached_stripe and not retry.replayed
    assert_every_write_is_keyed(log, office, [cycle, setup])
    assert_one_stripe_invoice_each(direct, office, [cycle, setup])


# --- every attempt of a call fails: the push stays pending, a later one completes it -------

PERSISTENT: list[tuple[Fault, str]] = [
    *[(Fault.DROP, step) for step in STEPS],  # the request reached Stripe each time, no answer came back
    (Fault.DELAY, "invoice_create"),
    (Fault.ERROR_500, "item_create"),
    (Fault.RESET, "finalize"),
    (Fault.RATE_LIMITED_RETRY, "customer_create"),
    (Fault.RATE_LIMITED, "item_create"),
]


def test_it_leaves_the_push_pending_when_every_attempt_fails_and_a_later_push_completes_it(
    proxy, gateway, direct, subtests
):
    for fault, step in PERSISTENT:
        with subtests.test(fault=str(fault), step=step):
            persistent_fault_on(step, fault, proxy, gateway, direct)


def persistent_fault_on(step: str, fault: Fault, proxy, gateway: Gateway, direct) -> None:
    office = billed_office(patients=1)
    cycle, setup = finalized(office)
    mark = proxy.mark()
    proxy.script(*STEPS[step], fault, times=ATTEMPTS)

    with pytest.raises(Transient):
        invoice_push(invoice_id=cycle.pk, gateway=gateway)
    local = Invoice.objects.get(pk=cycle.pk)
    assert local.push_state == PushState.PENDING, "transient: retry later, not failed"
    assert local.push_error and local.push_attempts == 1
    faulted = [r for r in proxy.since(mark) if r.fault == fault]
    assert len(faulted) == ATTEMPTS
    key = faulted[0].idempotency_key
    assert key and key.startswith(expected_key(step, office, cycle))
    assert [r.idempotency_key for r in faulted] == [key] * ATTEMPTS, "stripe-python's retries reuse the key"

    pushed, errors = push_until_done(cycle, gateway)
    assert pushed.push_state == PushState.PUSHED and errors == []
    invoice_push(invoice_id=setup.pk, gateway=gateway)
    proxy.settle()
    log = proxy.since(mark)
    later = same_key(log, key)[ATTEMPTS:]
    assert all(r.fault == Fault.PASS and r.status == 200 for r in later), "the next push reuses the key too"
    if fault == Fault.DROP:
        assert faulted[0].upstream_status == 200 and not faulted[0].replayed
        assert all(r.replayed for r in faulted[1:] + later)
    assert_every_write_is_keyed(log, office, [cycle, setup])
    assert_one_stripe_invoice_each(direct, office, [cycle, setup])


# --- the nasty case, after Stripe has forgotten the key -------------------------------------


def test_it_finds_the_stripe_invoice_by_metadata_when_the_create_answer_was_lost_and_the_key_forgotten(
    proxy, gateway, direct
):
    office = billed_office(patients=1)
    cycle, setup = finalized(office)
    proxy.script("POST", r"/v1/invoices", Fault.DROP, times=ATTEMPTS)

    with pytest.raises(Transient):
        invoice_push(invoice_id=cycle.pk, gateway=gateway)
    creates = [r for r in proxy.log if (r.method, r.path) == ("POST", "/v1/invoices")]
    assert [(r.upstream_status, r.replayed, r.status) for r in creates] == [(200, False, None)] + [
        (200, True, None)
    ] * (ATTEMPTS - 1)
    office.refresh_from_db()
    made = [
        r["id"]
        for r in Gateway(direct).invoices_list(params={"customer": office.payment_provider_customer_id, "limit": 100})
    ]
    assert len(made) == 1  # Stripe made it; we never heard its id

    # localstripe cannot expire keys: from now on the proxy gives every write a key Stripe
    # has never seen, so a second create would make a second invoice.
    proxy.forget_keys()
    Invoice.objects.filter(pk=cycle.pk).update(stripe_invoice_id=None)
    mark = proxy.mark()
    pushed = invoice_push(invoice_id=cycle.pk, gateway=gateway)

    resumed = proxy.since(mark)
    assert pushed.push_state == PushState.PUSHED and pushed.stripe_invoice_id == made[0]
    assert not [r for r in resumed if (r.method, r.path) == ("POST", "/v1/invoices")], "found, not created again"
    lookups = [r for r in resumed if (r.method, r.path) == ("GET", "/v1/invoices")]
    assert lookups and f"customer={office.payment_provider_customer_id}" in lookups[0].query
    invoice_push(invoice_id=setup.pk, gateway=gateway)
    assert_one_stripe_invoice_each(direct, office, [cycle, setup])


# --- what a push costs ----------------------------------------------------------------------


def test_it_spends_the_same_number_of_stripe_requests_per_invoice_whatever_the_patient_count(
    proxy, gateway, direct, subtests
):
    for patients in (3, 20):
        with subtests.test(patients=patients):
            requests_per_push(patients, proxy, gateway, direct)


def requests_per_push(patients: int, proxy, gateway: Gateway, direct) -> None:
    office = billed_office(patients=patients)
    cycle, setup = finalized(office)
    items = [(i.quantity, i.unit_amount_cents) for i in stripe_items(cycle)]
    assert items == [(patients, 450), (1, 15000 - patients * 450)]  # N patient lines, one price + the minimum

    start = proxy.mark()
    invoice_push(invoice_id=cycle.pk, gateway=gateway)
    stripe_id = str(Invoice.objects.get(pk=cycle.pk).stripe_invoice_id)
    assert [(r.method, r.path.replace(stripe_id, "{id}")) for r in proxy.since(start)] == [
        ("GET", "/v1/customers/search"),  # the office's first push only: a customer made before?
        ("POST", "/v1/customers"),  # ... no: created
        ("POST", "/v1/invoices"),  # a first attempt creates without a look-up
        ("GET", "/v1/invoices/{id}"),
        ("POST", "/v1/invoiceitems"),  # the patients, one item for the group
        ("POST", "/v1/invoiceitems"),  # the minimum adjustment
        ("POST", "/v1/invoices/{id}/finalize"),
    ]
    mark = proxy.mark()
    invoice_push(invoice_id=setup.pk, gateway=gateway)
    assert len(proxy.since(mark)) == 3 + len(stripe_items(setup)) == 4  # no customer create: reused
    assert_every_write_is_keyed(proxy.since(start), office, [cycle, setup])
    assert_one_stripe_invoice_each(direct, office, [cycle, setup])
