"""The office page's buttons (issue 9, item 2): subscribe, change plan, cancel at period end or
now with a reason, withdraw, one-off in major units, preview and run — each a confirmation
page that calls the same service the API uses, shown only when it applies (spec §4, §6–§8)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from billing.models import BillingRun, Invoice, InvoiceKind, InvoiceStatus, Plan
from billing.services import subscription_create
from billing.tests.support.factories import OfficeFactory, at, professional_plan
from offices.models import Office, SubscriptionStatus

pytestmark = pytest.mark.django_db

UTC = ZoneInfo("UTC")
NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def operator() -> Client:
    traveller = time_machine.travel(NOW, tick=False)
    traveller.start()
    client = Client()
    user = get_user_model().objects.create_superuser(username="root", email="root@vendor.example", password="x")
    client.force_login(user)
    yield client
    traveller.stop()


@pytest.fixture
def plans() -> tuple[Plan, Plan]:
    professional = professional_plan()
    basic = Plan.objects.create(
        code="basic", name="Basic", per_patient_cents=300, minimum_cents=5000, setup_fee_cents=0, currency="usd"
    )
    return professional, basic


def office_url(office: Office, action: str = "") -> str:
    if not action:
        return reverse("admin:offices_office_change", args=[office.pk])
    return reverse("admin:offices_office_changelist") + f"{office.pk}/{action}/"


def buttons(client: Client, office: Office) -> str:
    response = client.get(office_url(office))
    assert response.status_code == 200
    return response.content.decode()


def test_it_shows_only_the_buttons_that_apply(operator, plans):
    office = OfficeFactory(name="Lakeside Clinic")
    html = buttons(operator, office)
    assert office_url(office, "subscribe") in html
    assert office_url(office, "cancel") not in html and office_url(office, "change-plan") not in html
    with at(NOW):
        subscription_create(office=office, plan_code="professional")
    html = buttons(operator, office)
    assert office_url(office, "subscribe") not in html
    assert office_url(office, "cancel") in html and office_url(office, "change-plan") in html
    assert office_url(office, "withdraw-cancel") not in html  # nothing to withdraw yet
    assert office_url(office, "one-off") in html and office_url(office, "preview") in html


def test_it_subscribes_an_office_after_a_confirmation_page(operator, plans):
    professional, _ = plans
    office = OfficeFactory(name="Lakeside Clinic")
    page = operator.get(office_url(office, "subscribe"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "$4.50 USD per active patient a month, at least $150.00 USD" in text
    assert Office.objects.get(pk=office.pk).subscription_status == SubscriptionStatus.NONE  # nothing yet

    answer = operator.post(office_url(office, "subscribe"), {"apply": "1", "plan": professional.pk})
    assert answer.status_code == 302 and answer["Location"] == office_url(office)
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE and office.current_plan == professional
    created = AuditEvent.objects.get(action="subscription.created", target_id=str(office.pk))
    assert created.actor_type == "user" and created.actor_label == "root"
    # the setup fee came with the first cycle, as through the API
    assert Invoice.objects.filter(office=office, kind=InvoiceKind.ONE_OFF).count() == 1


def test_it_changes_the_plan_from_the_next_period(operator, plans):
    _, basic = plans
    office = OfficeFactory()
    with at(NOW):
        subscription_create(office=office, plan_code="professional")
    form = operator.get(office_url(office, "change-plan")).content.decode()
    assert "Basic" in form and ">Professional" not in form  # the plan it is on is not offered
    operator.post(office_url(office, "change-plan"), {"apply": "1", "plan": basic.pk})
    office.refresh_from_db()
    assert office.pending_plan == basic and office.current_plan.code == "professional"
    assert AuditEvent.objects.filter(action="subscription.plan_changed", actor_label="root").exists()


def test_it_cancels_at_period_end_with_a_reason_and_withdraws_it(operator, plans):
    office = OfficeFactory()
    with at(NOW):
        subscription_create(office=office, plan_code="professional")
    missing = operator.post(office_url(office, "cancel"), {"apply": "1", "when": "period_end", "reason": "  "})
    assert missing.status_code == 200 and "Say why the subscription is canceled." in missing.content.decode()
    assert not Office.objects.get(pk=office.pk).cancel_at_period_end

    operator.post(office_url(office, "cancel"), {"apply": "1", "when": "period_end", "reason": "Clinic closing"})
    office.refresh_from_db()
    assert office.cancel_at_period_end and office.subscription_status == SubscriptionStatus.ACTIVE
    scheduled = AuditEvent.objects.get(action="subscription.cancel_scheduled")
    assert scheduled.reason == "Clinic closing" and scheduled.data["mode"] == "period_end"
    assert office_url(office, "withdraw-cancel") in buttons(operator, office)

    operator.post(office_url(office, "withdraw-cancel"), {"apply": "1"})
    office.refresh_from_db()
    assert not office.cancel_at_period_end
    assert AuditEvent.objects.filter(action="subscription.cancel_withdrawn", actor_label="root").exists()


def test_it_cancels_now_and_finalizes_the_cut_period(operator, plans):
    office = OfficeFactory()
    with at(datetime(2026, 5, 1, 12, 0, tzinfo=UTC)):
        subscription_create(office=office, plan_code="professional")
    operator.post(office_url(office, "cancel"), {"apply": "1", "when": "now", "reason": "Contract ended"})
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.CANCELED and office.canceled_at == NOW
    cut = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE)
    assert cut.status in (InvoiceStatus.PAID, InvoiceStatus.OPEN) and cut.period_end == NOW
    assert AuditEvent.objects.get(action="subscription.canceled").reason == "Contract ended"


def test_it_refuses_phi_in_a_cancel_reason_and_keeps_the_subscription(operator, plans):
    from billing.tests.support.factories import PatientFactory

    office = OfficeFactory()
    PatientFactory(office=office, first_name="Zyxwvcanary", last_name="Qwertycanary", mrn="MRN-CANCEL-0042")
    with at(NOW):
        subscription_create(office=office, plan_code="professional")
    answer = operator.post(
        office_url(office, "cancel"), {"apply": "1", "when": "now", "reason": "Asked by MRN-CANCEL-0042"}
    )
    assert answer.status_code == 200 and "patient information" in answer.content.decode()
    office.refresh_from_db()
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    refusal = AuditEvent.objects.get(action="phi_guard.refused")
    assert "MRN-CANCEL-0042" not in refusal.reason + str(refusal.data)


def test_it_takes_one_off_amounts_in_major_units_and_refuses_sub_cent_ones(operator, plans):
    office = OfficeFactory()
    with at(NOW):
        subscription_create(office=office, plan_code="professional")
    form = operator.get(office_url(office, "one-off")).content.decode()
    assert "Amount (USD)" in form and "cents" not in form.lower() and "§" not in form
    data = {
        "apply": "1",
        "lines-TOTAL_FORMS": "5",
        "lines-INITIAL_FORMS": "0",
        "lines-MIN_NUM_FORMS": "0",
        "lines-MAX_NUM_FORMS": "5",
        "lines-0-description": "On-site training",
        "lines-0-amount": "120.005",
        "lines-0-quantity": "1",
    }
    refused = operator.post(office_url(office, "one-off"), data)
    assert refused.status_code == 200
    assert Invoice.objects.filter(office=office, kind=InvoiceKind.ONE_OFF).count() == 1  # the setup fee only
    data["lines-0-amount"] = "1,450.50".replace(",", "")
    created = operator.post(office_url(office, "one-off"), data)
    invoice = Invoice.objects.filter(office=office, kind=InvoiceKind.ONE_OFF).order_by("-pk").first()
    assert created.status_code == 302 and created["Location"] == reverse(
        "admin:billing_invoice_change", args=[invoice.pk]
    )
    assert invoice.total_cents == 145050 and invoice.status == InvoiceStatus.OPEN


def test_it_previews_and_runs_billing_for_this_office_only(operator, plans):
    office = OfficeFactory()
    other = OfficeFactory()
    with at(datetime(2026, 4, 1, 12, 0, tzinfo=UTC)):
        subscription_create(office=office, plan_code="professional")
        subscription_create(office=other, plan_code="professional")
    preview = operator.get(office_url(office, "preview"))
    assert preview.status_code == 200 and "nothing was saved" in preview.content.decode()
    assert not BillingRun.objects.exists()

    confirm = operator.get(office_url(office, "run-billing"))
    assert confirm.status_code == 200 and not BillingRun.objects.exists()
    operator.post(office_url(office, "run-billing"), {"apply": "1"})
    run = BillingRun.objects.get()
    assert run.invoices_finalized == 1  # this office's April period, not the other's
    assert Invoice.objects.filter(office=other, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT).count() == 1


def test_it_keeps_the_buttons_from_an_operator_without_the_permission(plans):
    office = OfficeFactory()
    viewer = get_user_model().objects.create_user(username="viewer", password="x", is_staff=True)
    from django.contrib.auth.models import Permission

    viewer.user_permissions.add(Permission.objects.get(codename="view_office"))
    client = Client()
    client.force_login(viewer)
    html = client.get(office_url(office)).content.decode()
    assert office_url(office, "subscribe") not in html and office_url(office, "one-off") not in html
    assert client.post(office_url(office, "subscribe"), {"apply": "1"}).status_code == 403
    assert Office.objects.get(pk=office.pk).subscription_status == SubscriptionStatus.NONE


def test_it_offers_every_choice_on_the_action_pages(operator, plans):
    office = OfficeFactory()
    with at(NOW):
        subscription_create(office=office, plan_code="professional")
    cancel = operator.get(office_url(office, "cancel")).content.decode()
    assert 'value="period_end"' in cancel and 'value="now"' in cancel
    setup_fee = Invoice.objects.get(office=office, kind=InvoiceKind.ONE_OFF)
    record = operator.get(reverse("admin:billing_invoice_changelist") + f"{setup_fee.pk}/record-payment/")
    assert 'value="cheque"' in record.content.decode() and 'value="wire"' in record.content.decode()


def test_it_links_the_stripe_customer_where_the_dashboard_is_configured(operator, plans, settings):
    office = OfficeFactory(payment_provider_customer_id="cus_Hub123")
    assert 'href="' not in buttons(operator, office).split("cus_Hub123")[0][-200:]  # no dashboard: plain id
    settings.STRIPE_DASHBOARD_URL = "https://dashboard.stripe.com/test/"
    assert 'href="https://dashboard.stripe.com/test/customers/cus_Hub123"' in buttons(operator, office)


def test_it_asks_for_the_reference_of_a_payment_made_outside_stripe(operator, plans):
    office = OfficeFactory()
    with at(NOW):
        subscription_create(office=office, plan_code="professional")
    setup_fee = Invoice.objects.get(office=office, kind=InvoiceKind.ONE_OFF)
    url = reverse("admin:billing_invoice_changelist") + f"{setup_fee.pk}/record-payment/"
    answer = operator.post(
        url, {"apply": "1", "method": "wire", "reference": " ", "received_on": "2026-05-10", "amount": "500.00"}
    )
    assert answer.status_code == 200 and "Give the payment&#x27;s reference" in answer.content.decode()
    assert Invoice.objects.get(pk=setup_fee.pk).status == InvoiceStatus.OPEN
