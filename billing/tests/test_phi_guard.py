"""The PHI guard (spec §9): free text and metadata never carry a patient's identifiers."""

from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from django.forms.models import model_to_dict

from audit.models import AuditEvent, Outcome
from billing.models import Invoice, LineItem
from billing.phi_guard import PhiRefused, phi_check
from billing.services import invoice_create_one_off
from billing.tests.support.factories import OfficeFactory, PatientFactory, at, operator
from offices.models import Office
from patients.models import Patient

pytestmark = pytest.mark.django_db

WHEN = datetime(2026, 3, 12, 10, tzinfo=ZoneInfo("America/Chicago"))


@pytest.fixture
def office() -> Office:
    """An office whose name shares a last name with one of its patients."""
    office = OfficeFactory(name="Holloway Pediatrics", billing_email="accounts@hollowaypeds.example")
    PatientFactory(
        office=office,
        first_name="Margaret",
        last_name="Holloway",
        date_of_birth=date(1984, 7, 3),
        mrn="A-448812",
        email="m.holloway@mail.example",
        phone="(312) 555-0147",
    )
    PatientFactory(office=office, first_name="Ann", last_name="Lee", date_of_birth=date(1990, 12, 25), mrn="A-100200")
    PatientFactory(office=office, first_name="Nina", last_name="Ward", date_of_birth=date(1962, 4, 18), mrn="A-7731")
    other = OfficeFactory(name="Quayside Family Practice")
    PatientFactory(
        office=other,
        first_name="Bartholomew",
        last_name="Quince",
        date_of_birth=date(1975, 2, 11),
        mrn="B-99121",
        email="bq@else.example",
        phone="(646) 555-0188",
    )
    return office


def check(office: Office, text: str) -> None:
    phi_check(office=office, fields={"description": text})


REFUSED = {
    "mrn": ["Follow-up for A-448812", "ref a-448812"],
    "email": ["Sent to M.Holloway@Mail.Example", "cc m.holloway@mail.example please"],
    "phone": [
        "call (312) 555-0147",
        "call 312.555.0147",
        "3125550147",
        "+1 312 555 0147",
        "312-555-0147 ext 2",
    ],
    "birth_date": [
        "born 1984-07-03",
        "DOB 07/03/1984",
        "dob 7/3/84",
        "July 3, 1984",
        "JULY 3, 1984",
        "3 Jul 1984",
        "July 3rd, 1984",  # ordinal day, as often written in US letters
    ],
    "full_name": ["Ann Lee", "ANN LEE", "ann lee", "Lee, Ann", "LEE, ANN", "Visit of lee, ann"],
    "last_name": [
        "Holloway",
        "re: HOLLOWAY account",
        "holloway",
        "Ward",
        "Holloway Pediatrics, for Holloway",
        "Mrs. Holloway's visit",  # possessive: the name still stands as a word
    ],
    "ssn": ["123-45-6789", "SSN 078 05 1120"],
}


@pytest.mark.parametrize(
    "text",
    [text for texts in REFUSED.values() for text in texts],
)
def test_it_refuses_the_offices_patient_identifiers(office: Office, text: str) -> None:
    with pytest.raises(PhiRefused) as exc:
        check(office, text)
    assert exc.value.status_code == 400
    assert exc.value.extra["field"] == "description"
    assert "patient information" in exc.value.message
    # The refusal names the field and the kind, never the matched value.
    for value in ("a-448812", "holloway", "1984", "3125550147", "555-0147", "ann", "123-45-6789", "078 05"):
        if value in text.lower():
            assert value not in exc.value.message.lower().replace("'description'", "")


def test_it_checks_nested_fields_and_names_the_field(office: Office) -> None:
    with pytest.raises(PhiRefused) as exc:
        phi_check(
            office=office,
            fields={"metadata": {"note": "fine"}, "lines": [{"description": "x"}, {"description": "A-448812"}]},
        )
    assert exc.value.extra["field"] == "lines[1].description"
    assert exc.value.extra["kind"] == "mrn"


def _billing_ref(office: Office) -> str:
    return Patient.objects.filter(office=office).order_by("id").first().billing_ref  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    [
        "Lee",  # a 3-letter last name alone
        "Lee Street office move",
        "Reward program credit",  # 'ward' inside another word
        "Forward-looking onboarding",
        "Hollowayville branch",  # 'holloway' inside another word
        "Amount 45000 cents",
        "$1,234.56 for 12 x 450",
        "Period 2026-03-10 to 2026-04-10",
        "03/10/2026 - 04/10/2026",
        "March 10, 2026 to April 10, 2026",
        "Holloway Pediatrics onboarding",
        "HOLLOWAY PEDIATRICS — training",
        "Invoice to accounts@hollowaypeds.example",
        # Another office's patients are not this office's PHI.
        "Bartholomew Quince",
        "Quince, Bartholomew",
        "Quince",
        "B-99121",
        "bq@else.example",
        "(646) 555-0188",
        "1975-02-11",
        "On-site training, 2 days",
    ],
)
def test_it_passes_billing_text(office: Office, text: str) -> None:
    check(office, text)


def test_it_passes_the_patients_billing_reference(office: Office) -> None:
    check(office, f"Adjustment for {_billing_ref(office)}: 450 cents")


def _audit_text(event: AuditEvent) -> str:
    return json.dumps(model_to_dict(event), default=str).lower()


def _assert_one_off_refused(office: Office, phi_value: str) -> None:
    invoices, lines = Invoice.objects.count(), LineItem.objects.count()
    staff = operator()
    with at(WHEN), pytest.raises(PhiRefused) as exc:
        invoice_create_one_off(
            office=office,
            actor=staff,
            lines=[
                {"description": "Training", "amount_cents": 10000},
                {"description": f"Extra time with {phi_value}", "amount_cents": 5000},
            ],
        )
    assert 400 <= exc.value.status_code < 500
    assert exc.value.extra["field"] == "lines[1].description"
    assert phi_value.lower() not in exc.value.message.lower()
    assert (Invoice.objects.count(), LineItem.objects.count()) == (invoices, lines)
    assert not AuditEvent.objects.filter(action="invoice.one_off_created").exists()
    assert not AuditEvent.objects.filter(action="invoice.finalized").exists()
    (refusal,) = AuditEvent.objects.filter(action="phi_guard.refused")
    assert refusal.outcome == Outcome.DENIED
    assert refusal.office_id == office.pk
    assert refusal.actor_id == str(staff.pk)
    assert phi_value.lower() not in _audit_text(refusal)


@pytest.mark.parametrize("phi_value", ["A-448812", "Margaret Holloway", "07/03/1984", "m.holloway@mail.example"])
def test_it_refuses_phi_in_a_one_off_invoice_and_saves_nothing(office: Office, phi_value: str) -> None:
    _assert_one_off_refused(office, phi_value)


@pytest.mark.django_db(transaction=True)
def test_it_audits_the_refusal_after_the_refused_work_rolls_back(office: Office) -> None:
    """Real commits: the refusal entry is committed on its own, the invoice never is."""
    _assert_one_off_refused(office, "(312) 555-0147")
    refusal = AuditEvent.objects.get(action="phi_guard.refused")
    assert refusal.entry_hash is not None  # committed and sealed into the chain
