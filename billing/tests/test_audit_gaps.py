"""What the audit trail used to miss (spec §9; issue 8, defect 10): operator status and
auditor membership changed in Django's user admin, subscription reads, operators' reads of
activation history, and a payment outside Stripe recorded with its method, reference, date
and amount instead of a fixed note."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from billing.models import Invoice, InvoiceStatus
from billing.services import subscription_create
from billing.stripe.push import invoice_push
from billing.tests.support.factories import OfficeFactory, PlanFactory, at
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import localstripe_env
from offices.models import COMPLIANCE_AUDITOR_GROUP, Role
from offices.services import office_member_grant
from patients.models import ActivationInterval

CHI = ZoneInfo("America/Chicago")
User = get_user_model()


def _superuser_client(client: Client) -> tuple[Client, object]:
    root = User.objects.create_superuser(username="root", email="root@vendor.example", password="x")
    client.force_login(root)
    return client, root


def _user_form(user: object, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": "",
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "09:00:00",
        "groups": [],
        "user_permissions": [],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not False}


@pytest.mark.django_db
def test_it_audits_operator_status_and_auditor_membership_changed_in_the_user_admin(client: Client) -> None:
    client, root = _superuser_client(client)
    auditors, _ = Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)
    user = User.objects.create_user(username="casey", password="x")
    url = reverse("admin:auth_user_change", args=[user.pk])
    response = client.post(url, _user_form(user, is_staff="on", groups=[auditors.pk]))
    assert response.status_code == 302, response.content.decode()[:2000]

    status = AuditEvent.objects.get(action="user.operator_status_changed", target_id=str(user.pk))
    assert status.actor_id == str(root.pk) and status.data["changes"] == {"is_staff": [False, True]}
    groups = AuditEvent.objects.get(action="user.groups_changed", target_id=str(user.pk))
    assert groups.data["added"] == [COMPLIANCE_AUDITOR_GROUP] and groups.data["auditor"] is True

    client.post(url, _user_form(user, is_staff=False, groups=[]))
    revoked = AuditEvent.objects.filter(action="user.groups_changed", target_id=str(user.pk)).order_by("pk").last()
    assert revoked.data["removed"] == [COMPLIANCE_AUDITOR_GROUP] and revoked.data["auditor"] is False
    assert AuditEvent.objects.filter(action="user.operator_status_changed", target_id=str(user.pk)).count() == 2


@pytest.mark.django_db
def test_it_audits_subscription_reads(client: Client) -> None:
    PlanFactory(code="basic")
    office = OfficeFactory()
    admin_user = User.objects.create_user(username="billing-admin", password="x")
    office_member_grant(office=office, user=admin_user, role=Role.OFFICE_BILLING_ADMIN)
    with at(datetime(2026, 3, 10, 14, tzinfo=CHI)):
        subscription_create(office=office, plan_code="basic")
    client.force_login(admin_user)
    assert client.get(f"/api/v1/offices/{office.pk}/subscription/").status_code == 200
    read = AuditEvent.objects.get(action="subscription.viewed")
    assert read.actor_id == str(admin_user.pk) and read.office_id == office.pk


@pytest.mark.django_db
def test_it_audits_operators_reads_of_activation_history(client: Client) -> None:
    from billing.services import patient_activate
    from billing.tests.support.factories import PatientFactory

    office = OfficeFactory()
    patient_activate(patient=PatientFactory(office=office))
    client, root = _superuser_client(client)
    interval = ActivationInterval.objects.get()
    assert client.get(reverse("admin:patients_activationinterval_changelist")).status_code == 200
    assert client.get(reverse("admin:patients_activationinterval_change", args=[interval.pk])).status_code == 200
    listed = AuditEvent.objects.get(action="activation_history.list_viewed")
    viewed = AuditEvent.objects.get(action="activation_history.viewed")
    assert listed.actor_id == viewed.actor_id == str(root.pk)
    assert viewed.target_id == str(interval.pk) and viewed.office_id == office.pk


@pytest.fixture(scope="module")
def stripe_url():
    with run_localstripe() as url:
        yield url


@pytest.mark.django_db(transaction=True)
def test_it_records_a_payment_outside_stripe_with_its_method_reference_date_and_amount(
    settings, stripe_url, client: Client
) -> None:
    with localstripe_env(settings, stripe_url):
        PlanFactory(code="basic", setup_fee_cents=145050)
        office = OfficeFactory()
        with at(datetime(2026, 3, 10, 14, tzinfo=CHI)):
            subscription_create(office=office, plan_code="basic")
        setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
        invoice_push(invoice_id=setup_fee.pk)
        client, root = _superuser_client(client)
        url = reverse("admin:billing_invoice_changelist")
        base = {"action": "mark_paid_out_of_band", "index": "0", "_selected_action": [str(setup_fee.pk)]}

        form_page = client.post(url, base)
        assert form_page.status_code == 200 and "1450.50" in form_page.content.decode()

        wrong = client.post(
            url,
            {
                **base,
                "apply": "1",
                "method": "cheque",
                "reference": "004211",
                "received_on": "2026-03-20",
                "amount": "1450.00",
            },
        )
        assert wrong.status_code == 200 and "partial payments are not recorded yet" in wrong.content.decode()
        setup_fee.refresh_from_db()
        assert setup_fee.status == InvoiceStatus.OPEN  # nothing written

        with at(datetime(2026, 3, 21, 10, tzinfo=CHI)):
            done = client.post(
                url,
                {
                    **base,
                    "apply": "1",
                    "method": "cheque",
                    "reference": "004211",
                    "received_on": "2026-03-20",
                    "amount": "1450.50",
                    "note": "deposited at First Bank",
                },
            )
        assert done.status_code == 302
        setup_fee.refresh_from_db()
        assert setup_fee.status == InvoiceStatus.PAID
        assert setup_fee.payment_note == "Cheque 004211 received 2026-03-20 — deposited at First Bank"
        event = AuditEvent.objects.get(action="payment.out_of_band", target_id=str(setup_fee.pk))
        assert event.actor_id == str(root.pk)
        assert (
            event.data["method"],
            event.data["reference"],
            event.data["received_on"],
            event.data["amount_cents"],
        ) == (
            "cheque",
            "004211",
            date(2026, 3, 20).isoformat(),
            145050,
        )
