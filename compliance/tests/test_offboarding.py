"""PHI offboarding of an office that leaves (issue 12 item 9): identifying and clinical
fields erased to a tombstone (optionally exported first), billing records kept, refused
while the office is still subscribed, audited without PHI."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.core.serializers.json import DjangoJSONEncoder

from audit.models import AuditEvent
from billing.engine.run import billing_run
from billing.models import Invoice, LineItem
from billing.phi_guard import phi_check
from billing.services import patient_activate, subscription_cancel, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from compliance.services import ERASED_BIRTH_DATE, is_erased, office_offboard_phi
from config.errors import ConflictError
from offices.models import SubscriptionStatus
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db
PHI = [
    ("Quintessa", "Vandermolen", date(1944, 7, 3), "MRN-QV-99120", "quintessa.v@phi.example", "312-555-0191"),
    ("Bartholomew", "Okonkwoize", date(1951, 12, 24), "MRN-BO-99121", "bart.ok@phi.example", "312-555-0192"),
]
PHI_TEXT = [value for row in PHI for value in (row[0], row[1], row[3], row[4], row[5], row[2].isoformat())]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def leaving() -> Any:
    """An office billed for two months, then canceled; another office untouched."""
    PlanFactory(code="basic", per_patient_cents=1000, setup_fee_cents=0)
    office = OfficeFactory(name="Lakeside Clinic", timezone="UTC")
    other = OfficeFactory(name="Harbor Clinic", timezone="UTC")
    patients = [
        PatientFactory(office=office, first_name=f, last_name=la, date_of_birth=d, mrn=m, email=e, phone=p)
        for f, la, d, m, e, p in PHI
    ]
    bystander = PatientFactory(office=other, first_name="Stays", last_name="Untouched", mrn="MRN-OTHER-1")
    with at(utc(2026, 9, 1, 9)):
        for patient in patients:
            patient_activate(patient=patient)
        subscription_create(office=office, plan_code="basic")
    with at(utc(2026, 10, 1, 0, 5)):
        billing_run()
    return office, patients, bystander


def _operator() -> Any:
    return get_user_model().objects.create_superuser(username="root", email="r@vendor.example", password="x")


def test_it_refuses_while_the_office_still_has_a_subscription(leaving: Any) -> None:
    office, patients, _ = leaving
    for status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED):
        type(office).objects.filter(pk=office.pk).update(subscription_status=status)
        with pytest.raises(ConflictError, match="still has a"):
            office_offboard_phi(office=office, actor=_operator() if status == "active" else None)
    assert [Patient.objects.get(pk=p.pk).last_name for p in patients] == ["Vandermolen", "Okonkwoize"]
    assert not AuditEvent.objects.filter(action="office.phi_offboarded").exists()


def test_it_erases_identifying_fields_and_keeps_billing_records(leaving: Any) -> None:
    office, patients, bystander = leaving
    operator = _operator()
    with at(utc(2026, 10, 15)):
        subscription_cancel(office=office, actor=operator, immediately=True)
    refs = [p.billing_ref for p in patients]
    lines = list(
        LineItem.objects.filter(patient__in=patients).values("pk", "patient_id", "patient_ref", "amount_cents")
    )
    invoices = list(Invoice.objects.filter(office=office).values("pk", "status", "total_cents", "number"))
    intervals = list(ActivationInterval.objects.filter(office=office).values())
    assert lines and invoices and intervals

    with at(utc(2026, 11, 1)):
        result = office_offboard_phi(office=office, actor=operator)
    assert (result.erased, result.already_erased, result.export_csv) == (2, 0, None)
    for patient, ref in zip(patients, refs, strict=True):
        patient.refresh_from_db()
        assert patient.billing_ref == ref and is_erased(patient)
        assert (patient.first_name, patient.last_name, patient.email, patient.phone) == ("", "", "", "")
        assert patient.date_of_birth == ERASED_BIRTH_DATE and patient.mrn == f"erased:{ref}"
    assert (
        list(LineItem.objects.filter(patient__in=patients).values("pk", "patient_id", "patient_ref", "amount_cents"))
        == lines
    )
    assert list(Invoice.objects.filter(office=office).values("pk", "status", "total_cents", "number")) == invoices
    assert list(ActivationInterval.objects.filter(office=office).values()) == intervals
    bystander.refresh_from_db()
    assert bystander.last_name == "Untouched"  # another office is never touched

    everything = json.dumps(list(Patient.objects.values()), cls=DjangoJSONEncoder)
    assert [s for s in PHI_TEXT if s in everything] == []
    entry = AuditEvent.objects.get(action="office.phi_offboarded")
    assert entry.office_id == office.pk and entry.actor_label == "root"
    assert entry.data["patients_erased"] == 2 and entry.data["activation_intervals_kept"] == len(intervals)
    trail = json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder)
    assert [s for s in PHI_TEXT if s in trail] == []
    # The PHI guard still works for the office (nothing left to match but the tombstone).
    phi_check(office=office, fields={"note": "Vandermolen"})

    again = office_offboard_phi(office=office, actor=operator)
    assert (again.erased, again.already_erased) == (0, 2)


def test_it_exports_the_patients_for_the_office_before_erasing_on_request(leaving: Any) -> None:
    office, patients, _ = leaving
    with at(utc(2026, 10, 15)):
        subscription_cancel(office=office, immediately=True)
    result = office_offboard_phi(office=office, export=True)
    assert result.export_csv is not None and result.erased == 2
    rows = list(csv.DictReader(io.StringIO(result.export_csv.decode())))
    assert [(r["billing_ref"], r["last_name"], r["mrn"], r["date_of_birth"]) for r in rows] == [
        (p.billing_ref, last, mrn, dob.isoformat()) for p, (_, last, dob, mrn, _, _) in zip(patients, PHI, strict=True)
    ]
    assert rows[0]["activations"].startswith("2026-09-01T09:00:00+00:00/")
    exported = AuditEvent.objects.get(action="patient_phi.exported")
    assert exported.data == {"patients": 2} and exported.office_id == office.pk
    assert all(is_erased(p) for p in Patient.objects.filter(office=office))


def test_it_offboards_from_the_command_and_erases_nothing_when_the_export_cannot_be_written(
    leaving: Any, tmp_path: Any
) -> None:
    office, _, _ = leaving
    with at(utc(2026, 10, 15)):
        subscription_cancel(office=office, immediately=True)
    with pytest.raises(CommandError, match="nothing was erased"):
        call_command("office_offboard_phi", office=office.pk, export=str(tmp_path / "missing" / "x.csv"))
    assert not any(is_erased(p) for p in Patient.objects.filter(office=office))
    out = tmp_path / "lakeside.csv"
    stdout = io.StringIO()
    call_command("office_offboard_phi", office=office.pk, export=str(out), stdout=stdout)
    assert "2 patient(s) erased" in stdout.getvalue()
    assert "Vandermolen" in out.read_text() and oct(out.stat().st_mode & 0o777) == "0o600"
    assert all(is_erased(p) for p in Patient.objects.filter(office=office))
    with pytest.raises(CommandError, match="exists already"):
        call_command("office_offboard_phi", office=office.pk, export=str(out))
    with pytest.raises(CommandError, match="No office"):
        call_command("office_offboard_phi", office=999999)
