"""The office's Stripe customer carries its business name and billing email (spec §8), and
nothing loses that: a change is marked on the office in its own transaction, cleared only
once Stripe has it, re-enqueued hourly while it is not; reconciliation compares every
office's customer with the office. Against localstripe over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.conf import settings as django_settings
from django.utils import timezone

from billing.stripe.gateway import Gateway, client
from billing.stripe.push import customer_ensure, customer_sync
from billing.stripe.reconcile import reconcile_stripe
from billing.stripe.tasks import enqueue_pending_customer_syncs
from billing.tests.support.factories import OfficeFactory
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import audits, localstripe_env, stripe_get, stripe_post
from config.celery_app import app
from offices.models import Office
from offices.services import office_update

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def gateway(settings: Any, stripe_url: str) -> Iterator[Gateway]:
    with localstripe_env(settings, stripe_url):
        yield Gateway(client(api_base=stripe_url))


def remote_customer(url: str, office: Office) -> dict[str, Any]:
    office.refresh_from_db()
    return stripe_get(url, f"/v1/customers/{office.payment_provider_customer_id}")


def test_a_change_is_marked_with_the_change_and_cleared_once_stripe_has_it(gateway: Gateway, stripe_url: str) -> None:
    office = OfficeFactory(name="Old Name Clinic")
    customer_ensure(office=office, gateway=gateway)
    assert Office.objects.get(pk=office.pk).customer_identity_changed_at is None

    office_update(office=office, name="New Name Clinic", billing_email="ap@newname.example")
    marked = Office.objects.get(pk=office.pk).customer_identity_changed_at
    assert marked is not None

    customer_sync(office_id=office.pk, gateway=gateway)
    assert Office.objects.get(pk=office.pk).customer_identity_changed_at is None
    remote = remote_customer(stripe_url, office)
    assert (remote["name"], remote["email"]) == ("New Name Clinic", "ap@newname.example")
    # A change of something else (not sent to Stripe) marks nothing.
    office_update(office=Office.objects.get(pk=office.pk), days_until_due=45)
    assert Office.objects.get(pk=office.pk).customer_identity_changed_at is None


def test_a_sync_whose_task_was_lost_is_enqueued_by_the_hourly_sweep(gateway: Gateway, stripe_url: str) -> None:
    """The broker lost the task (or was down when the change committed): nothing ran, the
    mark stays, and the sweep finds it — not before 10 minutes, and not for an office that
    has no customer yet (its customer is created with the current values)."""
    office = OfficeFactory(name="Lost Sync Clinic")
    no_customer = OfficeFactory(name="No Customer Yet")
    customer_ensure(office=office, gateway=gateway)
    office_update(office=office, name="Found Again Clinic")
    office_update(office=no_customer, name="Still No Customer")

    assert enqueue_pending_customer_syncs() == 0  # changed just now: its own task may still run
    past = timezone.now() - timedelta(minutes=11)
    Office.objects.filter(pk__in=[office.pk, no_customer.pk]).update(customer_identity_changed_at=past)
    # The enqueued task runs in this process (Celery's eager mode): the broker's own part
    # of the hourly sweep is proven with a real worker in engine/test_tasks.py.
    app.conf.task_always_eager = True
    try:
        assert enqueue_pending_customer_syncs() == 1
    finally:
        app.conf.task_always_eager = False
    assert remote_customer(stripe_url, office)["name"] == "Found Again Clinic"
    assert enqueue_pending_customer_syncs() == 0
    assert Office.objects.get(pk=no_customer.pk).customer_identity_changed_at == past


class ChangingDuringSync(Gateway):
    """A gateway during whose customer update the office is renamed again (a second
    request commits while the sync is in flight)."""

    def customer_update(self, *, office: Office, customer_id: str, key: str) -> Any:
        answer = super().customer_update(office=office, customer_id=customer_id, key=key)
        office_update(office=Office.objects.get(pk=office.pk), name="Renamed Meanwhile Clinic")
        return answer


def test_a_change_made_while_a_sync_is_in_flight_keeps_its_mark(gateway: Gateway, stripe_url: str) -> None:
    office = OfficeFactory(name="First Clinic")
    customer_ensure(office=office, gateway=gateway)
    office_update(office=office, name="Second Clinic")
    customer_sync(office_id=office.pk, gateway=ChangingDuringSync(client(api_base=stripe_url)))
    assert remote_customer(stripe_url, office)["name"] == "Second Clinic"
    assert Office.objects.get(pk=office.pk).customer_identity_changed_at is not None  # the newer change

    customer_sync(office_id=office.pk, gateway=gateway)
    assert remote_customer(stripe_url, office)["name"] == "Renamed Meanwhile Clinic"
    assert Office.objects.get(pk=office.pk).customer_identity_changed_at is None


def by_field(report: Any, office: Office) -> dict[str, Any]:
    return {m.field: m for m in report.mismatches if m.office_id == office.pk and m.invoice_id is None}


def test_reconciliation_compares_each_customer_with_its_office(gateway: Gateway, stripe_url: str) -> None:
    clean = OfficeFactory(name="Clean Clinic")
    renamed = OfficeFactory(name="Renamed In Stripe", billing_email="ap@renamed.example")
    deleted = OfficeFactory(name="Deleted In Stripe")
    doubled = OfficeFactory(name="Two Customers")
    moved = OfficeFactory(name="Metadata Edited")
    for office in (clean, renamed, deleted, doubled, moved):
        customer_ensure(office=office, gateway=gateway)
        office.refresh_from_db()
    # What people do in Stripe's dashboard, behind our back:
    stripe_post(
        stripe_url, f"/v1/customers/{renamed.payment_provider_customer_id}", name="Someone Else", email="x@y.example"
    )
    response = requests.delete(
        f"{stripe_url}/v1/customers/{deleted.payment_provider_customer_id}",
        headers={"Authorization": f"Bearer {django_settings.STRIPE_SECRET_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    copy = stripe_post(stripe_url, "/v1/customers", name="Two Customers", **{"metadata[office_id]": str(doubled.pk)})
    stripe_post(stripe_url, f"/v1/customers/{moved.payment_provider_customer_id}", **{"metadata[office_id]": "999999"})

    report = reconcile_stripe(gateway=gateway, office_ids=[o.pk for o in (clean, renamed, deleted, doubled, moved)])

    assert by_field(report, clean) == {}
    found = by_field(report, renamed)
    assert set(found) == {"customer_name", "customer_email"}
    assert (found["customer_name"].local, found["customer_name"].stripe) == ("Renamed In Stripe", "Someone Else")
    assert (found["customer_email"].local, found["customer_email"].stripe) == ("ap@renamed.example", "x@y.example")
    assert set(by_field(report, deleted)) == {"customer_missing"}
    duplicate = by_field(report, doubled)["duplicate_customer"]
    assert set(duplicate.stripe.split(",")) == {doubled.payment_provider_customer_id, copy["id"]}
    office_mismatch = by_field(report, moved)["customer_office"]
    assert (office_mismatch.local, office_mismatch.stripe) == (str(moved.pk), "999999")
    # Audited against the office; nothing was changed on either side.
    audited = {(a.target_id, a.reason) for a in audits("reconciliation.mismatch", target_type="offices.Office")}
    assert (str(renamed.pk), "customer_name") in audited and (str(deleted.pk), "customer_missing") in audited
    assert Office.objects.get(pk=renamed.pk).name == "Renamed In Stripe"
    assert remote_customer(stripe_url, renamed)["name"] == "Someone Else"


def test_reconciliation_waits_for_a_sync_under_way_and_reports_one_that_is_overdue(
    gateway: Gateway, stripe_url: str
) -> None:
    office = OfficeFactory(name="Before Clinic")
    customer_ensure(office=office, gateway=gateway)
    office_update(office=office, name="After Clinic")  # its sync task has not run yet
    assert by_field(reconcile_stripe(gateway=gateway, office_ids=[office.pk], audit=False), office) == {}

    Office.objects.filter(pk=office.pk).update(customer_identity_changed_at=timezone.now() - timedelta(hours=2))
    found = by_field(reconcile_stripe(gateway=gateway, office_ids=[office.pk], audit=False), office)
    assert (found["customer_name"].local, found["customer_name"].stripe) == ("After Clinic", "Before Clinic")


def test_a_customer_made_by_an_attempt_whose_answer_was_lost_is_found_not_made_again(
    gateway: Gateway, stripe_url: str
) -> None:
    """Issue 8, item 7: an earlier attempt created the customer and its answer was lost,
    longer ago than Stripe keeps idempotency keys (so the same key would create another).
    The look-up by `metadata.office_id` finds it; no second customer is made."""
    office = OfficeFactory(name="Lost Answer Clinic")
    earlier = stripe_post(
        stripe_url,
        "/v1/customers",
        name=office.name,
        email=office.billing_email,
        **{"metadata[office_id]": str(office.pk)},
    )
    assert customer_ensure(office=office, gateway=gateway) == earlier["id"]
    assert Office.objects.get(pk=office.pk).payment_provider_customer_id == earlier["id"]
    claiming = stripe_get(stripe_url, "/v1/customers/search", query=f"metadata['office_id']:'{office.pk}'")
    assert [c["id"] for c in claiming["data"]] == [earlier["id"]]
    assert [a.data["customer"] for a in audits("stripe.customer_found", office_id=office.pk)] == [earlier["id"]]
    # Asked again (a retried task): the stored id, no call to create.
    assert customer_ensure(office=Office.objects.get(pk=office.pk), gateway=gateway) == earlier["id"]
