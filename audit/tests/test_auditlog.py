"""django-auditlog's model diffs (spec §9: they complement the domain trail, with PHI
fields excluded, not masked): which models are registered, that no PHI value reaches a
log entry, and that entries carry the actor, validated IP and request id."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.test import Client
from guardian.shortcuts import assign_perm

from audit.auditlog_registry import INVOICE_STATUS_FIELDS, PATIENT_PHI_FIELDS
from billing.models import Invoice, InvoiceStatus, Plan
from billing.services import invoice_create_one_off, invoice_void
from billing.tests.support.factories import OfficeFactory, at, professional_plan
from offices.models import Company, Office, Role
from patients.models import Patient
from patients.services import patient_create

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)

# Unmistakable values: none may appear anywhere in auditlog's table.
CANARY = {
    "first_name": "Quillonzeph",
    "last_name": "Vandermarrow",
    "date_of_birth": date(1929, 11, 7),
    "mrn": "MRN-AUDITLOG-4242",
    "email": "quillon.canary@phi.example",
    "phone": "+1 (555) 014-4242",
}
CANARY_STRINGS = [
    "Quillonzeph",
    "Vandermarrow",
    "MRN-AUDITLOG-4242",
    "AUDITLOG-4242",
    "quillon.canary",
    "(555) 014-4242",
    "5550144242",
    "1929-11-07",
    "11/07/1929",
    "1929",
]
RENAMED = {
    "first_name": "Ombrethiel",
    "last_name": "Sarquandine",
    "date_of_birth": date(1931, 5, 6),
    "mrn": "MRN-AUDITLOG-9898",
    "email": "ombre.canary@phi.example",
    "phone": "+1 (555) 019-9898",
}


@pytest.fixture(autouse=True)
def fresh_throttles(db: None) -> None:
    cache.clear()


def logentry_dump() -> str:
    return json.dumps(list(LogEntry.objects.values()), cls=DjangoJSONEncoder)


def assert_no_phi(dumped: str, values: dict[str, Any]) -> None:
    leaked = [s for s in (*CANARY_STRINGS, *(str(v) for v in values.values())) if s in dumped]
    assert leaked == []


def test_it_registers_the_billing_models_and_patients() -> None:
    for model in (Company, Office, Plan, Invoice, Patient):
        assert auditlog.contains(model), model


def test_it_excludes_every_phi_field_of_patients_rather_than_masking_it() -> None:
    fields = auditlog.get_model_fields(Patient)
    assert set(PATIENT_PHI_FIELDS) == set(Patient.PHI_FIELDS)
    assert set(PATIENT_PHI_FIELDS) <= set(fields["exclude_fields"])
    assert set(fields["exclude_fields"]) - set(PATIENT_PHI_FIELDS) == {"intervals"}  # a reverse relation
    assert not fields["mask_fields"]
    assert not auditlog.get_serialize_options(Patient)["serialize_data"]  # a row copy would carry PHI


def test_it_keeps_phi_out_of_the_log_entries_of_a_patient_created_and_edited() -> None:
    office = OfficeFactory(name="Canary Clinic")
    with at(T0):
        patient = patient_create(office=office, **CANARY)
    created = LogEntry.objects.get_for_object(patient).get(action=LogEntry.Action.CREATE)
    assert set(created.changes_dict) <= {"id", "office", "billing_ref", "created_at"}
    assert created.changes_dict["billing_ref"] == ["None", patient.billing_ref]
    assert created.object_repr == patient.billing_ref

    for name, value in RENAMED.items():  # every PHI field changes; nothing is logged for it
        setattr(patient, name, value)
    patient.save()

    assert not LogEntry.objects.get_for_object(patient).filter(action=LogEntry.Action.UPDATE).exists()
    dumped = logentry_dump()
    assert_no_phi(dumped, CANARY)
    assert_no_phi(dumped, RENAMED)


def test_it_keeps_phi_out_of_log_entries_made_through_the_api() -> None:
    office = OfficeFactory(name="API Canary Clinic")
    staff = get_user_model().objects.create_user(username="staff", password="pw-auditlog-1234")
    assign_perm(f"offices.{Role.OFFICE_STAFF}", staff, office)
    client = Client()
    client.force_login(staff)
    body = {**CANARY, "date_of_birth": CANARY["date_of_birth"].isoformat()}

    response = client.post(
        f"/api/v1/offices/{office.pk}/patients/",
        data=json.dumps(body),
        content_type="application/json",
        REMOTE_ADDR="203.0.113.44",
    )

    assert response.status_code == 201, response.content
    patient = Patient.objects.get(pk=response.json()["id"])
    entry = LogEntry.objects.get_for_object(patient).get()
    assert entry.actor == staff
    assert entry.remote_addr == "203.0.113.44"
    assert entry.cid == response["X-Request-ID"]
    assert_no_phi(logentry_dump(), CANARY)


def test_it_logs_invoice_status_changes_and_nothing_else_of_the_invoice() -> None:
    office = OfficeFactory(name="Void Clinic")
    operator = get_user_model().objects.create_user(username="op", password="pw-auditlog-1234", is_staff=True)
    with at(T0):
        professional_plan()
        invoice = invoice_create_one_off(office=office, lines=[{"description": "Training", "amount_cents": 9000}])
    with at(T0.replace(day=12)):
        invoice_void(invoice=invoice, actor=operator, reason="duplicate")

    entries = LogEntry.objects.get_for_object(invoice).order_by("timestamp", "id")
    assert {field for entry in entries for field in entry.changes_dict} <= set(INVOICE_STATUS_FIELDS) | {"id"}
    [voided] = [e for e in entries if e.action == LogEntry.Action.UPDATE and "voided_at" in e.changes_dict]
    assert voided.changes_dict["status"] == [InvoiceStatus.OPEN, InvoiceStatus.VOID]
    assert voided.actor is None  # a service call outside a request: the domain trail names the operator
    assert not any("total_cents" in e.changes_dict or "subtotal_cents" in e.changes_dict for e in entries)


def test_it_names_the_token_user_as_the_actor_of_api_changes() -> None:
    """auditlog's middleware runs before DRF authenticates a token; the token scheme
    (config/authentication.py) fills the actor in."""
    operator = get_user_model().objects.create_user(username="op", password="pw-auditlog-1234", is_staff=True)
    token = Client().post(
        "/api/v1/auth/token/",
        data=json.dumps({"username": "op", "password": "pw-auditlog-1234"}),
        content_type="application/json",
    )
    assert token.status_code == 200

    response = Client(HTTP_AUTHORIZATION=f"Token {token.json()['token']}").post(
        "/api/v1/offices/",
        data=json.dumps({"name": "Token Clinic", "billing_email": "billing@token.example"}),
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    office = Office.objects.get(pk=response.json()["id"])
    entry = LogEntry.objects.get_for_object(office).get()
    assert entry.actor == operator
    assert entry.remote_addr == "127.0.0.1"


def test_it_loads_the_registry_without_importing_apps_at_module_level() -> None:
    """audit is a sink (house style): its auditlog module resolves models via the app registry."""
    import audit.auditlog_registry as registry

    with open(registry.__file__, encoding="utf-8") as handle:
        source = handle.read()
    for app in ("offices", "patients", "billing"):
        assert f"from {app}" not in source and f"import {app}" not in source
    assert apps.get_model("patients", "Patient") is Patient
