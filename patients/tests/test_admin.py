"""The operator console's patient pages (patients/admin.py) work with what they allow:
the billing reference, the office and the status. That nothing clinical is shown or
searchable is billing/tests/test_admin.py (the console-wide PHI canaries)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from billing.tests.support.factories import OfficeFactory, PatientFactory
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db

MARCH = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
MAY = datetime(2026, 5, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def console() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser(username="root", password="pw-patients-1234"))
    return client


def listed(console: Client, model: type, **params: str) -> str:
    response = console.get(reverse(f"admin:patients_{model._meta.model_name}_changelist"), params)
    assert response.status_code == 200, (params, response.status_code)
    return response.content.decode()


def test_it_filters_patients_by_office_status_and_billing_ref(console: Client) -> None:
    office, other = OfficeFactory(name="Office A"), OfficeFactory(name="Office B")
    active, idle, elsewhere = PatientFactory(office=office), PatientFactory(office=office), PatientFactory(office=other)
    ActivationInterval.objects.create(patient=active, office=office, activated_at=MARCH)

    page = listed(console, Patient, status="active")
    assert active.billing_ref in page and idle.billing_ref not in page and elsewhere.billing_ref not in page
    page = listed(console, Patient, status="inactive", office__id__exact=str(office.pk))
    assert idle.billing_ref in page and active.billing_ref not in page and elsewhere.billing_ref not in page
    page = listed(console, Patient, q=elsewhere.billing_ref)
    assert elsewhere.billing_ref in page and active.billing_ref not in page
    assert AuditEvent.objects.filter(action="patient.list_viewed", data={"via": "admin"}).count() == 3


def test_it_drills_activation_history_down_by_date_and_open_state(console: Client) -> None:
    march, may = PatientFactory(), PatientFactory()
    ActivationInterval.objects.create(patient=march, office_id=march.office_id, activated_at=MARCH, deactivated_at=MAY)
    ActivationInterval.objects.create(patient=may, office_id=may.office_id, activated_at=MAY)

    page = listed(console, ActivationInterval, activated_at__year="2026", activated_at__month="3")
    assert march.billing_ref in page and may.billing_ref not in page
    page = listed(console, ActivationInterval, open="yes")
    assert may.billing_ref in page and march.billing_ref not in page
    page = listed(console, ActivationInterval, q=march.billing_ref)
    assert march.billing_ref in page and may.billing_ref not in page
