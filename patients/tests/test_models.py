"""Patients and their activation history as the database keeps them (patients/models.py,
patients/migrations/0002_guards.py): billing references, MRNs per office, and intervals
that end after they start, one open at a time, closed once and never rewritten."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, transaction

from billing.tests.support.factories import OfficeFactory, PatientFactory
from patients.models import ActivationInterval, Patient, new_billing_ref

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
REF = re.compile(r"PT-[0-9ABCDEFGHJKMNPQRSTVWXYZ]{8}")


def interval(patient: Patient, start: datetime, end: datetime | None = None) -> ActivationInterval:
    return ActivationInterval.objects.create(
        patient=patient, office_id=patient.office_id, activated_at=start, deactivated_at=end
    )


def test_it_makes_opaque_unambiguous_billing_refs() -> None:
    refs = {new_billing_ref() for _ in range(500)}
    assert len(refs) == 500
    assert all(REF.fullmatch(ref) for ref in refs), [r for r in refs if not REF.fullmatch(r)]
    patient = PatientFactory(first_name="Ada", last_name="Lovelace", mrn="MRN-0001")
    assert REF.fullmatch(patient.billing_ref)
    assert str(patient) == patient.billing_ref  # never PHI: reaches the admin and logs


def test_it_refuses_a_billing_ref_used_by_another_patient_of_any_office() -> None:
    first = PatientFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        PatientFactory(office=OfficeFactory(), billing_ref=first.billing_ref)
    assert Patient.objects.filter(billing_ref=first.billing_ref).count() == 1


def test_it_keeps_mrns_unique_per_office_only() -> None:
    office, other = OfficeFactory(), OfficeFactory()
    PatientFactory(office=office, mrn="MRN-42")
    PatientFactory(office=other, mrn="MRN-42")  # another office may use the same MRN
    with pytest.raises(IntegrityError), transaction.atomic():
        PatientFactory(office=office, mrn="MRN-42")
    assert Patient.objects.filter(mrn="MRN-42").count() == 2


def test_it_refuses_an_interval_that_does_not_end_after_it_starts() -> None:
    patient = PatientFactory()
    for end in (T0, T0 - timedelta(seconds=1)):
        with pytest.raises(IntegrityError), transaction.atomic():
            interval(patient, T0, end)
    interval(patient, T0, T0 + timedelta(microseconds=1))
    assert ActivationInterval.objects.filter(patient=patient).count() == 1


def test_it_allows_one_open_interval_per_patient() -> None:
    patient, other = PatientFactory(), PatientFactory()
    interval(patient, T0)
    with pytest.raises(IntegrityError), transaction.atomic():
        interval(patient, T0 + timedelta(days=1))
    interval(other, T0)  # another patient's open interval is no conflict
    interval(patient, T0 - timedelta(days=10), T0 - timedelta(days=5))  # closed history is fine
    assert ActivationInterval.objects.filter(patient=patient, deactivated_at__isnull=True).count() == 1


def test_it_closes_an_interval_once_and_never_rewrites_it() -> None:
    patient = PatientFactory()
    row = interval(patient, T0)
    ActivationInterval.objects.filter(pk=row.pk).update(deactivated_at=T0 + timedelta(days=3))
    for rewrite in (
        {"deactivated_at": T0 + timedelta(days=4)},
        {"deactivated_at": None},
        {"activated_at": T0 - timedelta(days=1)},
    ):
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
            ActivationInterval.objects.filter(pk=row.pk).update(**rewrite)
    row.refresh_from_db()
    assert (row.activated_at, row.deactivated_at) == (T0, T0 + timedelta(days=3))


def test_it_does_not_let_an_open_interval_move_its_start() -> None:
    patient = PatientFactory()
    row = interval(patient, T0)
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        ActivationInterval.objects.filter(pk=row.pk).update(activated_at=T0 - timedelta(days=30))
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        ActivationInterval.objects.filter(pk=row.pk).update(office=OfficeFactory())
    row.refresh_from_db()
    assert (row.activated_at, row.deactivated_at, row.office_id) == (T0, None, patient.office_id)


def test_it_refuses_to_delete_activation_history_on_postgres(on_postgres: None) -> None:
    row = interval(PatientFactory(), T0, T0 + timedelta(days=1))
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        ActivationInterval.objects.filter(pk=row.pk).delete()
    assert ActivationInterval.objects.filter(pk=row.pk).exists()
