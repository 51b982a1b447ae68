"""Creating patients (patients/services.py): inactive at first, one MRN per office, an
audit entry that names the patient by billing reference only."""

from __future__ import annotations

import json
from datetime import date

import pytest
from django.contrib.auth import get_user_model
from django.core.serializers.json import DjangoJSONEncoder

from audit.models import AuditEvent
from billing.tests.support.factories import OfficeFactory
from config.errors import ApplicationError
from patients.models import ActivationInterval, Patient
from patients.services import patient_create

pytestmark = pytest.mark.django_db

PHI = {
    "first_name": "Zyxwvada",
    "last_name": "Qwertylovelace",
    "date_of_birth": date(1931, 7, 19),
    "mrn": "MRN-CANARY-7731",
    "email": "ada.canary@phi.example",
    "phone": "555-867-5309",
}
PHI_STRINGS = ("Zyxwvada", "Qwertylovelace", "1931-07-19", "MRN-CANARY-7731", "ada.canary@phi.example", "867-5309")


def test_it_creates_an_inactive_patient_and_audits_it_by_billing_ref_only() -> None:
    office = OfficeFactory()
    actor = get_user_model().objects.create_user(username="staff", password="pw-patients-1234")
    patient = patient_create(office=office, actor=actor, **PHI)
    stored = Patient.objects.get(pk=patient.pk)
    assert (stored.office_id, stored.last_name, stored.date_of_birth, stored.mrn) == (
        office.pk,
        "Qwertylovelace",
        date(1931, 7, 19),
        "MRN-CANARY-7731",
    )
    assert not ActivationInterval.objects.filter(patient=patient).exists()
    event = AuditEvent.objects.get(action="patient.created")
    assert (event.target_type, event.target_id, event.office_id) == ("patients.Patient", str(patient.pk), office.pk)
    assert event.actor_id == str(actor.pk)
    assert event.data == {"patient_ref": patient.billing_ref}
    row = json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder)
    assert not [s for s in PHI_STRINGS if s in row]


def test_it_refuses_a_second_patient_with_the_same_mrn_in_one_office() -> None:
    office = OfficeFactory()
    first = patient_create(office=office, **PHI)
    with pytest.raises(ApplicationError) as refused:
        patient_create(office=office, **{**PHI, "first_name": "Other"})
    assert refused.value.status_code == 400
    assert refused.value.message == "A patient with this MRN already exists in this office."
    assert refused.value.extra == {"field": "mrn"}
    assert list(Patient.objects.filter(office=office)) == [first]
    assert AuditEvent.objects.filter(action="patient.created").count() == 1


def test_it_accepts_the_same_mrn_in_another_office() -> None:
    office, other = OfficeFactory(), OfficeFactory()
    first = patient_create(office=office, **PHI)
    second = patient_create(office=other, **PHI)
    assert first.billing_ref != second.billing_ref
    assert {p.office_id for p in Patient.objects.filter(mrn=PHI["mrn"])} == {office.pk, other.pk}
