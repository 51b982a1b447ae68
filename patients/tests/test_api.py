"""The patients endpoints (patients/api.py): office staff create, list, activate and
deactivate their own office's patients; activation goes through billing's use-case
(`billing.services.patient_activate`), the one deliberate crossing. Clinical fields leave
only through the staff's serializer, never into audit entries or an operator's answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.auth import get_user_model
from django.core.serializers.json import DjangoJSONEncoder
from django.test import Client

from audit.models import AuditEvent
from billing.models import Invoice, InvoiceKind, InvoiceStatus, LineItem, LineKind
from billing.services import subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, operator, professional_plan
from offices.models import Office, Role
from offices.services import office_member_grant, office_member_revoke
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db

CANARY = {
    "first_name": "Zyxwvada",
    "last_name": "Qwertylovelace",
    "date_of_birth": "1931-07-19",
    "mrn": "MRN-CANARY-7731",
    "email": "ada.canary@phi.example",
    "phone": "555-867-5309",
}
PHI_STRINGS = ("Zyxwvada", "Qwertylovelace", "1931-07-19", "MRN-CANARY-7731", "ada.canary@phi.example", "867-5309")


@dataclass
class World:
    office: Office  # subscribed to `professional`, so activations bill
    other_office: Office
    owner: Any  # office_staff of office A
    teammate: Any  # office_billing_admin of office A
    other: Any  # office_staff of office B
    operator: Any
    patient: Patient  # office A, inactive, carrying PHI canaries
    other_patient: Patient  # office B, inactive


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw-patients-1234", **extra)


def call(who: Any, method: str, path: str, body: Any = None) -> Any:
    client = Client()
    if who is not None:
        client.force_login(who)
    if body is None:
        return getattr(client, method)("/api/v1/" + path)
    return getattr(client, method)("/api/v1/" + path, data=json.dumps(body), content_type="application/json")


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"message", "extra"}, body
    return body


def no_phi_in(text: str) -> list[str]:
    return [s for s in PHI_STRINGS if s in text]


@pytest.fixture
def world() -> World:
    professional_plan()
    office = OfficeFactory(name="Office A", timezone="America/Chicago")
    other_office = OfficeFactory(name="Office B", timezone="America/Chicago")
    owner, teammate, other = make_user("staff_a"), make_user("admin_a"), make_user("staff_b")
    office_member_grant(office=office, user=owner, role=Role.OFFICE_STAFF)
    office_member_grant(office=office, user=teammate, role=Role.OFFICE_BILLING_ADMIN)
    office_member_grant(office=other_office, user=other, role=Role.OFFICE_STAFF)
    subscription_create(office=office, plan_code="professional")
    patient = PatientFactory(office=office, **{**CANARY, "date_of_birth": date(1931, 7, 19)})
    return World(office, other_office, owner, teammate, other, operator(), patient, PatientFactory(office=other_office))


# --- Creating ---------------------------------------------------------------------------

NEW = {"first_name": "Grace", "last_name": "Hopper", "date_of_birth": "1906-12-09", "mrn": "MRN-NEW-1"}


def test_it_creates_an_inactive_patient_for_office_staff(world: World) -> None:
    response = call(world.owner, "post", f"offices/{world.office.pk}/patients/", {**NEW, "billing_ref": "PT-CHOSEN1"})
    assert response.status_code == 201, response.content
    body = response.json()
    patient = Patient.objects.get(pk=body["id"])
    assert patient.office_id == world.office.pk
    assert body["billing_ref"] == patient.billing_ref != "PT-CHOSEN1"  # read-only: the client cannot pick it
    assert body["is_active"] is False
    assert {k: body[k] for k in NEW} == NEW
    assert (body["email"], body["phone"]) == ("", "")
    event = AuditEvent.objects.get(action="patient.created", target_id=str(patient.pk))
    assert event.data == {"patient_ref": patient.billing_ref}


def test_it_refuses_a_patient_without_a_birth_date_and_writes_nothing(world: World) -> None:
    before = Patient.objects.count()
    body = error(call(world.owner, "post", f"offices/{world.office.pk}/patients/", {**NEW, "date_of_birth": ""}), 400)
    assert body["message"].startswith("date_of_birth: ")
    assert "date_of_birth" in body["extra"]["fields"]
    assert Patient.objects.count() == before
    assert not AuditEvent.objects.filter(action="patient.created").exists()


def test_it_refuses_a_duplicate_mrn_in_the_office_with_a_400_naming_it(world: World) -> None:
    body = error(call(world.owner, "post", f"offices/{world.office.pk}/patients/", {**NEW, "mrn": CANARY["mrn"]}), 400)
    assert body == {"message": "A patient with this MRN already exists in this office.", "extra": {"field": "mrn"}}
    assert Patient.objects.filter(mrn=CANARY["mrn"]).count() == 1


def test_it_lets_only_the_offices_own_staff_create_patients(world: World) -> None:
    path = f"offices/{world.office.pk}/patients/"
    assert error(call(world.teammate, "post", path, NEW), 403)["message"] == (
        "You may not create patients for office 'Office A'."
    )
    assert error(call(world.other, "post", path, NEW), 404)["message"] == "Office not found."
    error(call(world.operator, "post", path, NEW), 403)
    assert not Patient.objects.filter(mrn=NEW["mrn"]).exists()


# --- Listing ----------------------------------------------------------------------------


def test_it_lists_only_the_offices_own_patients(world: World) -> None:
    third = PatientFactory(office=world.office)
    rows = call(world.owner, "get", f"offices/{world.office.pk}/patients/").json()["results"]
    assert [r["id"] for r in rows] == [world.patient.pk, third.pk]
    assert rows[0]["last_name"] == CANARY["last_name"]
    rows = call(world.other, "get", f"offices/{world.other_office.pk}/patients/").json()["results"]
    assert [r["id"] for r in rows] == [world.other_patient.pk]
    assert error(call(world.other, "get", f"offices/{world.office.pk}/patients/"), 404)
    assert error(call(world.teammate, "get", f"offices/{world.office.pk}/patients/"), 403)


def test_it_answers_an_operator_with_billing_refs_and_no_clinical_field(world: World) -> None:
    response = call(world.operator, "get", f"offices/{world.office.pk}/patients/")
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"id": world.patient.pk, "billing_ref": world.patient.billing_ref, "is_active": False}
    ]
    assert no_phi_in(response.content.decode()) == []
    event = AuditEvent.objects.get(action="patient.list_viewed")
    assert (event.actor_id, event.office_id, event.data) == (
        str(world.operator.pk),
        world.office.pk,
        {"clinical_fields": False},
    )


# --- Activation: the crossing into billing ----------------------------------------------


def test_it_activates_through_billing_and_bills_the_patient_on_the_open_draft(world: World) -> None:
    patient = world.patient
    response = call(world.owner, "post", f"patients/{patient.pk}/activate/")
    assert response.status_code == 200, response.content
    assert response.json()["is_active"] is True
    assert response.json()["billing_ref"] == patient.billing_ref
    [open_interval] = ActivationInterval.objects.filter(patient=patient)
    assert open_interval.deactivated_at is None and open_interval.office_id == world.office.pk
    draft = Invoice.objects.get(office=world.office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
    [line] = LineItem.objects.filter(invoice=draft, patient=patient)
    assert (line.kind, line.patient_ref, line.amount_cents) == (LineKind.ACTIVATION, patient.billing_ref, 450)
    assert no_phi_in(line.description) == []
    event = AuditEvent.objects.get(action="patient.activated")
    assert (event.actor_id, event.target_id, event.office_id) == (str(world.owner.pk), str(patient.pk), world.office.pk)
    assert event.data["patient_ref"] == patient.billing_ref


def test_it_deactivates_and_reactivates_by_appending_history(world: World) -> None:
    patient = world.patient
    assert call(world.owner, "post", f"patients/{patient.pk}/activate/").status_code == 200
    response = call(world.owner, "post", f"patients/{patient.pk}/deactivate/")
    assert response.status_code == 200 and response.json()["is_active"] is False
    [closed] = ActivationInterval.objects.filter(patient=patient)
    assert closed.deactivated_at is not None and closed.deactivated_at > closed.activated_at
    assert AuditEvent.objects.filter(action="patient.deactivated", target_id=str(patient.pk)).count() == 1

    assert call(world.owner, "post", f"patients/{patient.pk}/activate/").json()["is_active"] is True
    first, second = ActivationInterval.objects.filter(patient=patient).order_by("activated_at")
    assert (first.pk, first.activated_at, first.deactivated_at) == (
        closed.pk,
        closed.activated_at,
        closed.deactivated_at,
    )
    assert second.activated_at > first.deactivated_at and second.deactivated_at is None
    # Reactivation in the same cycle bills nothing more: one line per patient per invoice.
    assert LineItem.objects.filter(patient=patient).count() == 1


def test_it_hides_another_offices_patient_from_activation(world: World) -> None:
    for action in ("activate", "deactivate"):
        body = error(call(world.other, "post", f"patients/{world.patient.pk}/{action}/"), 404)
        assert body["message"] == "Patient not found."  # exactly what a missing id answers
        assert error(call(world.other, "post", f"patients/987654/{action}/"), 404)["message"] == "Patient not found."
    assert not ActivationInterval.objects.filter(patient=world.patient).exists()


def test_it_does_not_let_a_billing_admin_or_an_operator_activate(world: World) -> None:
    for who in (world.teammate, world.operator):
        body = error(call(who, "post", f"patients/{world.patient.pk}/activate/"), 403)
        assert body["message"] == "You may not activate patients for office 'Office A'."
    assert not ActivationInterval.objects.filter(patient=world.patient).exists()
    assert not LineItem.objects.filter(patient=world.patient).exists()


def test_it_shuts_a_revoked_staff_member_out_of_the_offices_patients(world: World) -> None:
    client = Client()
    client.force_login(world.owner)
    assert client.get(f"/api/v1/offices/{world.office.pk}/patients/").status_code == 200
    office_member_revoke(office=world.office, user=world.owner, actor=world.operator)
    assert client.get(f"/api/v1/offices/{world.office.pk}/patients/").status_code == 404
    assert client.post(f"/api/v1/patients/{world.patient.pk}/activate/").status_code == 404
    assert not ActivationInterval.objects.filter(patient=world.patient).exists()


def test_it_keeps_phi_out_of_every_audit_entry_and_model_diff(world: World) -> None:
    path = f"offices/{world.office.pk}/patients/"
    created = call(world.owner, "post", path, {**CANARY, "mrn": "MRN-CANARY-7732"}).json()
    for patient_id in (world.patient.pk, created["id"]):
        assert call(world.owner, "post", f"patients/{patient_id}/activate/").status_code == 200
        assert call(world.owner, "post", f"patients/{patient_id}/deactivate/").status_code == 200
    assert call(world.owner, "get", path).status_code == 200
    assert call(world.operator, "get", path).status_code == 200

    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"patient.created", "patient.activated", "patient.deactivated", "patient.list_viewed"} <= actions
    events = json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder)
    assert no_phi_in(events) == []
    assert LogEntry.objects.filter(content_type__app_label="patients").exists()  # the diffs were recorded
    diffs = json.dumps(list(LogEntry.objects.values()), cls=DjangoJSONEncoder)
    assert no_phi_in(diffs) == []
    assert AuditEvent.objects.get(action="patient.list_viewed", actor_id=str(world.owner.pk)).data == {
        "clinical_fields": True
    }
