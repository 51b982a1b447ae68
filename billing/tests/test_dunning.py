"""Dunning (spec §8): past due, grace, suspension, recovery — and payments made outside
Stripe. The Stripe parts run through localstripe over HTTP with signed deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from billing.dunning import dunning_run
from billing.models import Invoice, InvoiceStatus, PushState
from billing.phi_guard import PhiRefused
from billing.selectors import payment_status
from billing.services import invoice_void, subscription_cancel
from billing.stripe.events import invoice_mark_paid_out_of_band
from billing.stripe.gateway import Gateway, client
from billing.tasks import dunning_tick
from billing.tests.support.factories import PatientFactory, at, operator
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import (
    audits,
    billed_office,
    deliver,
    events_of,
    finalized,
    localstripe_env,
    push_all,
    stripe_get,
    stripe_post,
    wait_for,
    with_card,
)
from config.errors import ConflictError
from offices.models import CollectionMethod, Role, SubscriptionStatus
from offices.services import office_member_grant
from patients.models import Patient

pytestmark = pytest.mark.django_db(transaction=True)
CHI = ZoneInfo("America/Chicago")
GRACE = timedelta(days=14)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with run_localstripe() as url:
        yield url


@pytest.fixture
def stripe_env(settings, stripe_url) -> Iterator[str]:
    with localstripe_env(settings, stripe_url):
        yield stripe_url


def send_invoice_office(**kw):
    """Setup fee finalized 2026-03-10 14:00 CHI, due 30 days later (2026-04-09 14:00);
    first cycle finalized 2026-04-10 01:00 CHI, due 2026-05-10 01:00."""
    office = billed_office(collection_method=CollectionMethod.SEND_INVOICE, **kw)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    cycle = Invoice.objects.get(office=office, kind="cycle", status=InvoiceStatus.OPEN)
    return office, setup_fee, cycle


def office_staff(office):
    user = get_user_model().objects.create_user(username=f"staff{office.pk}", password="x")
    office_member_grant(office=office, user=user, role=Role.OFFICE_STAFF)
    return user


def activate_over_api(user, patient: Patient):
    """`POST patients/{id}/activate/` as office staff (logged in at the current clock:
    sessions expire after 15 idle minutes)."""
    http = Client()
    http.force_login(user)
    return http.post(f"/api/v1/patients/{patient.pk}/activate/")


# --- send_invoice: past due when the due date passes -----------------------------------------


def test_it_marks_a_send_invoice_invoice_past_due_once_its_due_date_passes():
    office, setup_fee, _cycle = send_invoice_office()
    assert setup_fee.due_at == datetime(2026, 4, 9, 14, tzinfo=CHI)
    dunning_run(now=setup_fee.due_at)  # due, not yet past due
    setup_fee.refresh_from_db()
    assert setup_fee.past_due_at is None

    stats = dunning_run(now=setup_fee.due_at + timedelta(microseconds=1))
    assert (stats.invoices_past_due, stats.offices_past_due) == (1, 1)
    setup_fee.refresh_from_db()
    office.refresh_from_db()
    assert setup_fee.past_due_at == setup_fee.due_at  # when it became past due, not when we noticed
    assert office.subscription_status == SubscriptionStatus.PAST_DUE
    assert office.past_due_since == setup_fee.due_at
    [entry] = audits("invoice.past_due")
    assert entry.data["number"] == setup_fee.number
    assert audits("subscription.past_due", office_id=office.pk)[0].data["past_due_cents"] == 50000
    status = payment_status(office=office)
    assert (status.outstanding_cents, status.past_due_cents) == (50000 + 15000, 50000)


def test_it_suspends_only_after_more_than_the_grace_period():
    office, setup_fee, _ = send_invoice_office()
    due = setup_fee.due_at
    dunning_run(now=due + GRACE)  # past due for exactly 14 days: not more
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.PAST_DUE
    stats = dunning_run(now=due + GRACE + timedelta(seconds=1))
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED and stats.offices_suspended == 1
    [suspended] = audits("subscription.suspended", office_id=office.pk)
    assert suspended.data["grace_days"] == 14 and suspended.data["past_due_cents"] == 50000


def test_a_suspended_office_cannot_activate_but_nothing_else_stops():
    office, setup_fee, _ = send_invoice_office(patients=2)
    dunning_run(now=setup_fee.due_at + GRACE + timedelta(hours=1))
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED
    active_before = [p.pk for p in Patient.objects.filter(office=office)]
    newcomer = PatientFactory(office=office)
    with at(datetime(2026, 4, 25, 9, tzinfo=CHI)):
        response = activate_over_api(office_staff(office), newcomer)
    assert response.status_code == 409
    assert "suspended" in response.json()["message"]
    # Active patients stay active; the next cycle still bills them.
    with at(datetime(2026, 5, 10, 2, tzinfo=CHI)):
        from billing.engine.run import billing_run

        billing_run()
    may_cycle = Invoice.objects.get(office=office, kind="cycle", period_start__date="2026-04-10")
    assert may_cycle.status == InvoiceStatus.OPEN
    assert {line.patient_id for line in may_cycle.lines.filter(patient__isnull=False)} == set(active_before)


def test_it_comes_back_to_active_when_nothing_is_past_due_any_more():
    office, setup_fee, _cycle = send_invoice_office()
    now = setup_fee.due_at + GRACE + timedelta(days=1)
    dunning_run(now=now)
    with at(now):
        invoice_void(invoice=setup_fee, actor=operator(), reason="issued in error")
    stats = dunning_run(now=now)
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE and office.past_due_since is None
    assert stats.offices_reactivated == 1
    assert audits("subscription.reactivated", office_id=office.pk)[0].data["from"] == "suspended"
    assert payment_status(office=office).past_due_cents == 0


def test_grace_runs_from_the_oldest_unpaid_invoice():
    office, setup_fee, cycle = send_invoice_office()
    assert cycle.due_at == datetime(2026, 5, 10, 1, tzinfo=CHI)
    now = cycle.due_at + timedelta(days=3)
    dunning_run(now=now)
    office.refresh_from_db()
    # The setup fee has been past due since 04-09: more than 14 days.
    assert office.past_due_since == setup_fee.due_at
    assert office.subscription_status == SubscriptionStatus.SUSPENDED
    with at(now):
        invoice_void(invoice=setup_fee, actor=operator(), reason="paid to the wrong vendor")
    dunning_run(now=now)
    office.refresh_from_db()
    # Left: the cycle invoice, past due for 3 days — within grace again.
    assert office.past_due_since == cycle.due_at
    assert office.subscription_status == SubscriptionStatus.PAST_DUE
    dunning_run(now=cycle.due_at + GRACE + timedelta(minutes=1))
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED


def test_it_is_idempotent():
    _office, setup_fee, _ = send_invoice_office()
    now = setup_fee.due_at + GRACE + timedelta(days=1)
    dunning_run(now=now)
    before = (len(audits("invoice.past_due")), len(audits("subscription.suspended")))
    again = dunning_run(now=now)
    assert (again.invoices_past_due, again.offices_suspended, again.offices_past_due) == (0, 0, 0)
    assert (len(audits("invoice.past_due")), len(audits("subscription.suspended"))) == before


def test_it_leaves_charge_automatically_invoices_to_stripe():
    office = billed_office()  # charge_automatically: due at finalization, past due only on a failed payment
    dunning_run(now=datetime(2026, 6, 1, tzinfo=CHI))
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert not Invoice.objects.filter(office=office, past_due_at__isnull=False).exists()


def test_it_keeps_the_status_of_a_canceled_office():
    office, setup_fee, _ = send_invoice_office()
    with at(datetime(2026, 4, 11, tzinfo=CHI)):
        subscription_cancel(office=office, actor=operator(), immediately=True)
    dunning_run(now=setup_fee.due_at + GRACE + timedelta(days=1))
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.CANCELED
    assert office.past_due_since == setup_fee.due_at  # still known, for the operators


def test_the_hourly_task_runs_the_dunning_pass():
    _office, setup_fee, _ = send_invoice_office()
    with at(setup_fee.due_at + timedelta(hours=1)):
        result = dunning_tick.apply().get()
    assert result["invoices_past_due"] == 1 and result["offices_past_due"] == 1
    assert audits("invoice.past_due")[0].task_id


# --- Through Stripe: declined card → past due → suspended → card fixed → active --------------


def test_a_declined_card_leads_to_suspension_and_a_fixed_card_back_to_active(stripe_env):
    url = stripe_env
    office = billed_office(patients=2)
    staff = office_staff(office)
    gateway = Gateway(client(api_base=url))
    customer_id = with_card(url, office, gateway, card="pm_card_chargeCustomerFail")  # 4000000000000341
    pushed = push_all(office, gateway)
    wait_for(
        lambda: len(events_of(url, customer_id, {"invoice.payment_failed"})) == len(pushed),
        what="both automatic payments to fail",
    )
    for event in events_of(url, customer_id):
        assert deliver(event).status_code == 200
    office.refresh_from_db()
    invoices = finalized(office)
    assert office.subscription_status == SubscriptionStatus.PAST_DUE
    assert all(i.status == InvoiceStatus.OPEN and i.past_due_at for i in invoices)
    assert office.past_due_since == min(i.past_due_at for i in invoices)
    assert len(audits("payment.failed", office_id=office.pk)) == 2  # one per failed attempt
    assert len(audits("invoice.past_due", office_id=office.pk)) == 2
    assert payment_status(office=office).past_due_cents == 50000 + 15000

    # Past due, within grace: activations still allowed.
    assert activate_over_api(staff, PatientFactory(office=office)).status_code == 200

    # Time passes beyond the grace period: suspended, activations refused with a reason.
    later = office.past_due_since + GRACE + timedelta(minutes=5)
    dunning_run(now=office.past_due_since + GRACE)
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.PAST_DUE
    dunning_run(now=later)
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED
    with at(later):
        refused = activate_over_api(staff, PatientFactory(office=office))
    assert refused.status_code == 409 and "suspended" in refused.json()["message"]

    # The card is fixed in a Stripe-hosted page and the invoices are paid.
    with_card(url, office, gateway, card="pm_card_visa")
    for invoice in invoices:
        paid = stripe_post(url, f"/v1/invoices/{invoice.stripe_invoice_id}/pay")
        assert paid["status"] == "paid"
    paid_events = events_of(url, customer_id, {"invoice.paid"})
    assert len(paid_events) == 2
    with at(later + timedelta(minutes=1)):  # the clock goes on: past the grace period still
        for event in paid_events:
            assert deliver(event).status_code == 200
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE and office.past_due_since is None
    assert {i.status for i in finalized(office) if i.stripe_invoice_id} == {InvoiceStatus.PAID}
    assert audits("subscription.reactivated", office_id=office.pk)[0].data["from"] == "suspended"
    with at(later + timedelta(minutes=1)):
        assert activate_over_api(staff, PatientFactory(office=office)).status_code == 200
    for invoice in finalized(office):
        if invoice.stripe_invoice_id:
            assert stripe_get(url, f"/v1/invoices/{invoice.stripe_invoice_id}")["total"] == invoice.total_cents


# --- Payments made outside Stripe ------------------------------------------------------------


def test_it_records_a_payment_made_outside_stripe(stripe_env):
    url = stripe_env
    office, setup_fee, cycle = send_invoice_office()
    gateway = Gateway(client(api_base=url))
    push_all(office, gateway)
    dunning_run(now=timezone.now())
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED  # both due dates long gone
    staff = operator()

    for invoice in (setup_fee, cycle):
        paid = invoice_mark_paid_out_of_band(invoice=invoice, actor=staff, note="Cheque 004211", gateway=gateway)
        assert paid.status == InvoiceStatus.PAID and paid.payment_note == "Cheque 004211" and paid.paid_at
        remote = stripe_get(url, f"/v1/invoices/{paid.stripe_invoice_id}")
        assert remote["status"] == "paid" and remote["paid_out_of_band"] is True
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    entries = audits("payment.out_of_band", office_id=office.pk)
    assert [e.actor_label for e in entries] == ["operator", "operator"]
    assert entries[0].data["total_cents"] == 50000 and "Cheque" not in str(entries[0].data)

    # Stripe's invoice.paid events arrive afterwards: nothing more happens.
    for event in events_of(url, office.payment_provider_customer_id, {"invoice.paid"}):
        assert deliver(event).json()["outcome"].startswith("no change")
    assert not audits("payment.succeeded", office_id=office.pk)


def test_it_pushes_an_invoice_that_has_not_reached_stripe_before_recording_its_payment(stripe_env):
    _office, setup_fee, _ = send_invoice_office()
    assert setup_fee.push_state == PushState.PENDING and setup_fee.stripe_invoice_id is None
    gateway = Gateway(client(api_base=stripe_env))
    paid = invoice_mark_paid_out_of_band(invoice=setup_fee, actor=operator(), note="Wire 2026-0412", gateway=gateway)
    assert paid.push_state == PushState.PUSHED and paid.stripe_invoice_id
    remote = stripe_get(stripe_env, f"/v1/invoices/{paid.stripe_invoice_id}")
    assert (remote["status"], remote["paid_out_of_band"], remote["total"]) == ("paid", True, 50000)


def test_it_refuses_phi_in_the_payment_note_before_calling_stripe(stripe_env):
    office, setup_fee, _ = send_invoice_office(patients=1)
    gateway = Gateway(client(api_base=stripe_env))
    push_all(office, gateway)
    setup_fee.refresh_from_db()
    patient = Patient.objects.filter(office=office).first()
    with pytest.raises(PhiRefused):
        invoice_mark_paid_out_of_band(
            invoice=setup_fee, actor=operator(), note=f"cheque from {patient.last_name}", gateway=gateway
        )
    assert stripe_get(stripe_env, f"/v1/invoices/{setup_fee.stripe_invoice_id}")["status"] == "open"
    assert Invoice.objects.get(pk=setup_fee.pk).status == InvoiceStatus.OPEN
    [refusal] = audits("phi_guard.refused")
    assert refusal.data["context"] == "invoice_mark_paid_out_of_band" and patient.last_name not in str(refusal.data)


def test_it_refuses_an_out_of_band_payment_for_an_invoice_stripe_already_collected(stripe_env):
    url = stripe_env
    office = billed_office(patients=1)
    gateway = Gateway(client(api_base=url))
    with_card(url, office, gateway)
    invoice = push_all(office, gateway)[0]
    wait_for(lambda: stripe_get(url, f"/v1/invoices/{invoice.stripe_invoice_id}")["status"] == "paid", what="paid")
    with pytest.raises(ConflictError):
        invoice_mark_paid_out_of_band(invoice=invoice, actor=operator(), note="Cheque 1", gateway=gateway)
    assert Invoice.objects.get(pk=invoice.pk).payment_note == ""


def test_it_refuses_an_out_of_band_payment_for_a_paid_or_void_invoice():
    _office, setup_fee, _ = send_invoice_office()
    staff = operator()
    with at(datetime(2026, 4, 1, tzinfo=CHI)):
        invoice_void(invoice=setup_fee, actor=staff)
    with pytest.raises(ConflictError):
        invoice_mark_paid_out_of_band(invoice=setup_fee, actor=staff, note="Cheque 2")


def test_stripe_marks_paid_an_invoice_with_no_payment_note_when_paid_out_of_band_there(stripe_env):
    office, setup_fee, _ = send_invoice_office()
    gateway = Gateway(client(api_base=stripe_env))
    push_all(office, gateway)
    setup_fee.refresh_from_db()
    stripe_post(stripe_env, f"/v1/invoices/{setup_fee.stripe_invoice_id}/pay", paid_out_of_band="true")
    for event in events_of(stripe_env, office.payment_provider_customer_id, {"invoice.paid"}):
        deliver(event)
    setup_fee.refresh_from_db()
    assert setup_fee.status == InvoiceStatus.PAID
    assert setup_fee.payment_note == "paid out of band (recorded in Stripe)"
    assert audits("payment.succeeded", office_id=office.pk)[0].data["out_of_band"] is True


# --- Written off in Stripe (issue 8: what marked_uncollectible does to a suspended office) ---


def test_an_invoice_marked_uncollectible_no_longer_holds_its_office_suspended(stripe_env):
    """docs/payment-plan.md §8: an uncollectible invoice is written off; it no longer counts as
    past due, so an office suspended only for it is active again at once (audited), and
    collecting it later (uncollectible → paid) changes the office no further."""
    url = stripe_env
    office, setup_fee, cycle = send_invoice_office(patients=2)
    gateway = Gateway(client(api_base=url))
    push_all(office, gateway)
    later = setup_fee.due_at + GRACE + timedelta(hours=1)
    dunning_run(now=later)
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.SUSPENDED

    setup_fee.refresh_from_db()
    marked = stripe_post(url, f"/v1/invoices/{setup_fee.stripe_invoice_id}/mark_uncollectible")
    assert marked["status"] == "uncollectible"
    with at(later + timedelta(minutes=1)):
        for event in events_of(url, office.payment_provider_customer_id, {"invoice.marked_uncollectible"}):
            assert deliver(event).status_code == 200
    office.refresh_from_db()
    setup_fee.refresh_from_db()
    assert setup_fee.status == InvoiceStatus.UNCOLLECTIBLE and setup_fee.marked_uncollectible_at is not None
    assert office.subscription_status == SubscriptionStatus.ACTIVE and office.past_due_since is None
    assert audits("subscription.reactivated", office_id=office.pk)[0].data["from"] == "suspended"
    assert payment_status(office=office).past_due_cents == 0
    # The cycle invoice, not yet due, is untouched; the next dunning pass keeps the office active.
    assert Invoice.objects.get(pk=cycle.pk).status == InvoiceStatus.OPEN
    dunning_run(now=later + timedelta(minutes=2))
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE

    # Paid after all (a cheque arrives): the invoice is paid, the office stays as it is.
    stripe_post(url, f"/v1/invoices/{setup_fee.stripe_invoice_id}/pay", paid_out_of_band="true")
    with at(later + timedelta(minutes=3)):
        for event in events_of(url, office.payment_provider_customer_id, {"invoice.paid"}):
            assert deliver(event).status_code == 200
    office.refresh_from_db()
    assert Invoice.objects.get(pk=setup_fee.pk).status == InvoiceStatus.PAID
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert len(audits("subscription.reactivated", office_id=office.pk)) == 1


def test_a_retried_out_of_band_payment_whose_stripe_side_already_succeeded_is_recorded(stripe_env):
    """Issue 8, item 17: the first attempt's `/pay` (paid_out_of_band) reached Stripe, then
    the process died before the local invoice was paid. The operator tries again: no
    conflict, the payment is recorded once, with the note of the retry."""
    url = stripe_env
    office, setup_fee, _ = send_invoice_office()
    gateway = Gateway(client(api_base=url))
    push_all(office, gateway)
    setup_fee.refresh_from_db()
    stripe_post(url, f"/v1/invoices/{setup_fee.stripe_invoice_id}/pay", paid_out_of_band="true")  # the lost attempt
    assert Invoice.objects.get(pk=setup_fee.pk).status == InvoiceStatus.OPEN

    paid = invoice_mark_paid_out_of_band(invoice=setup_fee, actor=operator(), note="Wire 88120", gateway=gateway)
    assert paid.status == InvoiceStatus.PAID and paid.payment_note == "Wire 88120"
    assert stripe_get(url, f"/v1/invoices/{setup_fee.stripe_invoice_id}")["status"] == "paid"
    assert len(audits("payment.out_of_band", office_id=office.pk)) == 1
