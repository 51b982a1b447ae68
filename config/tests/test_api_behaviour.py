"""How the API behaves beyond who may call it (spec §1, §6, §10): the error format,
pagination, invoice filters, caching headers, the OpenAPI schema and docs, invoice PDFs."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.staticfiles import finders
from django.test import Client
from drf_spectacular.drainage import GENERATOR_STATS
from guardian.shortcuts import assign_perm
from pypdf import PdfReader
from rest_framework.settings import api_settings

from billing.documents import money
from billing.engine.run import billing_run
from billing.models import Invoice, InvoiceKind, InvoiceStatus
from billing.services import patient_activate, subscription_cancel, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, professional_plan
from config.urls import api_v1
from offices.models import COMPLIANCE_AUDITOR_GROUP, Office, Role, SubscriptionStatus
from patients.models import Patient

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=5)
RUN = datetime(2026, 4, 10, 6, 0, tzinfo=UTC)  # after the first cycle's end (00:00 Chicago = 05:00 UTC)
NUMBER = re.compile(re.escape(settings.INVOICE_NUMBER_PREFIX) + r"-\d{4}-\d{6}")
ANON = 401 if api_settings.DEFAULT_AUTHENTICATION_CLASSES[0]().authenticate_header(None) else 403


@dataclass
class World:
    office: Office
    other_office: Office
    staff: Any
    admin: Any
    auditor: Any
    operator: Any
    patients: list[Patient]

    def get(self, who: Any, path: str) -> Any:
        return call(who, "get", path)


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw-behaviour-1234", **extra)


def call(who: Any, method: str, path: str, body: Any = None, raw: str | None = None) -> Any:
    """One request as `who` (None: anonymous), logged in under the current frozen clock."""
    client = Client()
    if who is not None:
        client.force_login(who)
    url = path if path.startswith(("/", "http://", "https://")) else "/api/v1/" + path
    if raw is not None:
        return getattr(client, method)(url, data=raw, content_type="application/json")
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, data=json.dumps(body), content_type="application/json")


@pytest.fixture
def world() -> World:
    """Office A on `professional` since T0 with two active patients (setup-fee invoice + draft)."""
    with at(T0 - timedelta(days=5)):
        professional_plan()
        PlanFactory(code="basic", name="Basic", per_patient_cents=300)
        office = OfficeFactory(name="Behaviour Clinic", timezone="America/Chicago")
        other = OfficeFactory(name="Other Clinic", timezone="America/Chicago")
        staff, admin, auditor = make_user("staff"), make_user("admin"), make_user("auditor")
        auditor.groups.add(Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)[0])
        operator = make_user("operator", is_staff=True)
        assign_perm(f"offices.{Role.OFFICE_STAFF}", staff, office)
        assign_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", admin, office)
        patients = [PatientFactory(office=office) for _ in range(2)]
        for patient in patients:
            patient_activate(patient=patient)
    with at(T0):
        subscription_create(office=office, plan_code="professional")
    return World(office, other, staff, admin, auditor, operator, patients)


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (status, response.status_code, response.content[:400])
    body = response.json()
    assert set(body) == {"message", "extra"}, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    assert isinstance(body["extra"], dict), body
    return body


# --- The error format ------------------------------------------------------------------


def test_it_answers_an_invalid_body_with_400_message_and_extra(world: World) -> None:
    with at(T1):
        bad_plan = {"code": "bad plan!", "name": "Bad", "per_patient_cents": "lots"}
        body = assert_error(call(world.operator, "post", "plans/", bad_plan), 400)
        assert "fields" in body["extra"]
        bad_patient = {"first_name": "Ada", "last_name": "Bad", "date_of_birth": "not a date", "mrn": "M-1"}
        body = assert_error(call(world.staff, "post", f"offices/{world.office.pk}/patients/", bad_patient), 400)
        assert "date_of_birth" in body["message"]
        assert_error(call(world.operator, "post", "offices/", raw="{not json"), 400)
        assert_error(call(world.operator, "post", f"offices/{world.office.pk}/one-off-invoices/", {"lines": []}), 400)
        assert_error(call(world.admin, "patch", f"offices/{world.office.pk}/subscription/", {}), 400)


def test_it_answers_unknown_objects_with_404_message_and_extra(world: World) -> None:
    with at(T1):
        for path in ("offices/999999/", "offices/999999/invoices/", "invoices/999999/", "invoices/999999/pdf/"):
            assert_error(call(world.operator, "get", path), 404)
        assert_error(call(world.staff, "post", "patients/999999/activate/"), 404)
        # Another office's objects look exactly like missing ones.
        assert_error(call(world.admin, "get", f"offices/{world.other_office.pk}/invoices/"), 404)


def test_it_answers_a_forbidden_action_with_403_message_and_extra(world: World) -> None:
    with at(T1):
        body = assert_error(call(world.staff, "get", f"offices/{world.office.pk}/invoices/"), 403)
        assert "invoices" in body["message"]
        assert_error(call(world.admin, "post", f"offices/{world.office.pk}/patients/", {}), 403)
        assert_error(call(world.admin, "delete", f"offices/{world.office.pk}/subscription/?immediately=true"), 403)


def test_it_answers_activating_an_active_patient_with_409_naming_the_problem(world: World) -> None:
    patient = world.patients[0]
    with at(T1):
        body = assert_error(call(world.staff, "post", f"patients/{patient.pk}/activate/"), 409)
        assert "already active" in body["message"]
        assert patient.billing_ref in body["message"]
        assert call(world.staff, "post", f"patients/{patient.pk}/deactivate/").status_code == 200
        body = assert_error(call(world.staff, "post", f"patients/{patient.pk}/deactivate/"), 409)
        assert "not active" in body["message"]


def test_it_says_why_an_activation_is_refused_for_a_canceled_office(world: World) -> None:
    fresh = PatientFactory(office=world.office)
    with at(T1):
        subscription_cancel(office=world.office, immediately=True)
        body = assert_error(call(world.staff, "post", f"patients/{fresh.pk}/activate/"), 409)
    assert "canceled" in body["message"]


def test_it_says_why_an_activation_is_refused_for_a_suspended_office(world: World) -> None:
    fresh = PatientFactory(office=world.office)
    # No dunning service exists yet to get here; the state is set directly (test setup only).
    Office.objects.filter(pk=world.office.pk).update(subscription_status=SubscriptionStatus.SUSPENDED)
    with at(T1):
        body = assert_error(call(world.staff, "post", f"patients/{fresh.pk}/activate/"), 409)
    assert "office billing is suspended" in body["message"]


def test_it_answers_unauthenticated_requests_with_the_error_format(world: World) -> None:
    with at(T1):
        for method, path in (
            ("get", f"offices/{world.office.pk}/invoices/"),
            ("get", "offices/"),
            ("post", f"offices/{world.office.pk}/patients/"),
            ("get", "audit-events/"),
        ):
            response = call(None, method, path)
            assert_error(response, ANON)
            if ANON == 401:
                assert "WWW-Authenticate" in response


# --- Pagination ------------------------------------------------------------------------


LIST_ENDPOINTS = [
    ("operator", "plans/"),
    ("admin", "plans/"),
    ("operator", "offices/"),
    ("auditor", "offices/"),
    ("staff", "offices/{office}/patients/"),
    ("operator", "offices/{office}/patients/"),
    ("admin", "offices/{office}/invoices/"),
    ("operator", "offices/{office}/invoices/"),
    # Scoped to the office: every request logs in again, and logins are audited (office-less).
    ("auditor", "audit-events/?office={office}"),
    ("admin", "audit-events/"),
]


@pytest.mark.parametrize(("role", "path"), LIST_ENDPOINTS, ids=[f"{p} as {r}" for r, p in LIST_ENDPOINTS])
def test_it_paginates_every_list_as_count_next_previous_results(world: World, role: str, path: str) -> None:
    who = getattr(world, role)
    url = path.format(office=world.office.pk)
    with at(T1):
        whole = world.get(who, url)
        assert whole.status_code == 200, whole.content[:300]
        body = whole.json()
        assert set(body) == {"count", "next", "previous", "results"}
        assert body["count"] >= 2 and len(body["results"]) == body["count"]
        assert body["next"] is None and body["previous"] is None
        first = world.get(who, f"{url}{'&' if '?' in url else '?'}page_size=1").json()
        assert first["count"] == body["count"] and len(first["results"]) == 1
        assert first["next"] and first["previous"] is None
        second = world.get(who, first["next"]).json()
        assert len(second["results"]) == 1 and second["previous"]
        assert second["results"][0] != first["results"][0]


# --- Invoice filters -------------------------------------------------------------------


def test_it_filters_invoices_by_status_and_kind(world: World) -> None:
    with at(RUN):
        billing_run(as_of=RUN)
        base = f"offices/{world.office.pk}/invoices/"

        def listed(query: str) -> list[tuple[str, str]]:
            response = world.get(world.admin, base + query)
            assert response.status_code == 200, response.content[:300]
            return sorted((i["kind"], i["status"]) for i in response.json()["results"])

        everything = listed("")
        assert everything == [("cycle", "draft"), ("cycle", "open"), ("one_off", "open")]
        assert listed("?status=draft") == [("cycle", "draft")]
        assert listed("?status=open") == [("cycle", "open"), ("one_off", "open")]
        assert listed("?kind=cycle") == [("cycle", "draft"), ("cycle", "open")]
        assert listed("?kind=one_off") == [("one_off", "open")]
        assert listed("?kind=cycle&status=open") == [("cycle", "open")]
        assert listed("?status=paid") == []
        body = assert_error(world.get(world.admin, base + "?status=unpaid"), 400)
        assert "unpaid" in body["message"] and "open" in body["extra"]["allowed"]
        body = assert_error(world.get(world.admin, base + "?kind=subscription"), 400)
        assert "subscription" in body["message"] and "one_off" in body["extra"]["allowed"]


# --- Caching ---------------------------------------------------------------------------


def _no_store(response: Any) -> bool:
    return "no-store" in [part.strip() for part in response.get("Cache-Control", "").split(",")]


def test_it_marks_billing_responses_no_store(world: World) -> None:
    setup_fee = Invoice.objects.get(office=world.office, kind=InvoiceKind.ONE_OFF)
    oid = world.office.pk
    with at(T1):
        responses = {
            "plans": world.get(world.admin, "plans/"),
            "subscription": world.get(world.admin, f"offices/{oid}/subscription/"),
            "invoices": world.get(world.admin, f"offices/{oid}/invoices/"),
            "invoice": world.get(world.admin, f"invoices/{setup_fee.pk}/"),
            "pdf": world.get(world.admin, f"invoices/{setup_fee.pk}/pdf/"),
            "payment status": world.get(world.admin, f"offices/{oid}/payment-status/"),
            "subscription change": call(world.admin, "patch", f"offices/{oid}/subscription/", {"plan": "basic"}),
            "one-off": call(
                world.operator,
                "post",
                f"offices/{oid}/one-off-invoices/",
                {"lines": [{"description": "Training", "amount_cents": 100}]},
            ),
            "refused (403)": world.get(world.staff, f"offices/{oid}/invoices/"),
            "hidden (404)": world.get(world.admin, f"offices/{world.other_office.pk}/payment-status/"),
        }
    assert {name: r.status_code for name, r in responses.items() if r.status_code >= 400} == {
        "refused (403)": 403,
        "hidden (404)": 404,
    }
    assert [name for name, r in responses.items() if not _no_store(r)] == []


def test_it_marks_patient_responses_no_store(world: World) -> None:
    """CHOICE (the spec names only billing): the patients endpoints carry PHI, which no
    browser or proxy cache should keep either."""
    oid = world.office.pk
    with at(T1):
        responses = {
            "list": world.get(world.staff, f"offices/{oid}/patients/"),
            "create": call(
                world.staff,
                "post",
                f"offices/{oid}/patients/",
                {"first_name": "Ada", "last_name": "Cache", "date_of_birth": "1970-01-01", "mrn": "MRN-CACHE"},
            ),
            "deactivate": call(world.staff, "post", f"patients/{world.patients[0].pk}/deactivate/"),
        }
    assert [r.status_code for r in responses.values()] == [200, 201, 200]
    assert [name for name, r in responses.items() if not _no_store(r)] == []


# --- OpenAPI schema and docs -----------------------------------------------------------


def test_it_serves_the_openapi_schema_covering_every_endpoint(world: World) -> None:
    GENERATOR_STATS.reset()
    with at(T1):
        response = world.get(world.operator, "/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in schema["paths"].items() for method in ops}
    for pattern in api_v1:
        view = pattern.callback.view_class  # type: ignore[attr-defined]
        path = "/api/v1/" + re.sub(r"<int:(\w+)>", r"{\1}", str(pattern.pattern))
        for method in ("get", "post", "patch", "delete"):
            if hasattr(view, method):
                assert (path, method) in documented, (path, method)


def test_it_generates_the_schema_without_errors(world: World) -> None:
    """drf-spectacular reports a view it cannot introspect and degrades its operation
    (e.g. to "no response body") instead of failing: such errors must not exist."""
    GENERATOR_STATS.reset()
    with at(T1):
        assert world.get(world.operator, "/api/schema/?format=json").status_code == 200
    assert dict(GENERATOR_STATS._error_cache) == {}


# The success code of each operation per spec §10: a POST that creates answers 201, actions
# (activate, deactivate, grant) 200, DELETE 204, except cancel: 200 with the subscription.
SUCCESS_CODES = {
    ("/api/v1/plans/", "get"): "200",
    ("/api/v1/plans/", "post"): "201",
    ("/api/v1/offices/", "get"): "200",
    ("/api/v1/offices/", "post"): "201",
    ("/api/v1/offices/{office_id}/", "get"): "200",
    ("/api/v1/offices/{office_id}/members/", "post"): "200",
    ("/api/v1/offices/{office_id}/members/{user_id}/", "delete"): "204",
    ("/api/v1/offices/{office_id}/subscription/", "get"): "200",
    ("/api/v1/offices/{office_id}/subscription/", "post"): "201",
    ("/api/v1/offices/{office_id}/subscription/", "patch"): "200",
    ("/api/v1/offices/{office_id}/subscription/", "delete"): "200",
    ("/api/v1/offices/{office_id}/patients/", "get"): "200",
    ("/api/v1/offices/{office_id}/patients/", "post"): "201",
    ("/api/v1/patients/{patient_id}/activate/", "post"): "200",
    ("/api/v1/patients/{patient_id}/deactivate/", "post"): "200",
    ("/api/v1/offices/{office_id}/invoices/", "get"): "200",
    ("/api/v1/invoices/{invoice_id}/", "get"): "200",
    ("/api/v1/invoices/{invoice_id}/pdf/", "get"): "200",
    ("/api/v1/offices/{office_id}/payment-status/", "get"): "200",
    ("/api/v1/offices/{office_id}/one-off-invoices/", "post"): "201",
    ("/api/v1/audit-events/", "get"): "200",
}


def test_it_documents_the_success_code_the_contract_promises(world: World) -> None:
    with at(T1):
        schema = json.loads(world.get(world.operator, "/api/schema/?format=json").content)
    documented = {
        (path, method): sorted(code for code in op["responses"] if code.startswith("2"))
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
    }
    wrong = {key: documented.get(key) for key, code in SUCCESS_CODES.items() if documented.get(key) != [code]}
    assert wrong == {}


def test_it_documents_every_list_endpoint_as_paginated(world: World) -> None:
    with at(T1):
        schema = json.loads(world.get(world.operator, "/api/schema/?format=json").content)
    components = schema["components"]["schemas"]
    not_paginated = []
    for path in (
        "/api/v1/plans/",
        "/api/v1/offices/",
        "/api/v1/offices/{office_id}/patients/",
        "/api/v1/offices/{office_id}/invoices/",
        "/api/v1/audit-events/",
    ):
        content = schema["paths"][path]["get"]["responses"]["200"].get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
        props = components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
        if not {"count", "next", "previous", "results"} <= set(props):
            not_paginated.append(path)
    assert not_paginated == []


def test_it_serves_swagger_ui_without_any_external_url(world: World) -> None:
    with at(T1):
        response = world.get(None, "/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    external = [a for a in assets if re.match(r"^(https?:)?//", a)]
    assert external == []
    assert not re.search(r"https?://(?!localhost|127\.0\.0\.1|testserver)", html)
    for name in ("cdn.jsdelivr", "unpkg.com", "cdnjs", "googleapis"):
        assert name not in html
    static = settings.STATIC_URL if settings.STATIC_URL.startswith("/") else "/" + settings.STATIC_URL
    for asset in assets:
        assert asset.startswith(static), asset
        assert finders.find(asset[len(static) :]), f"{asset} is not a static file of the project"


# --- Invoice PDFs ----------------------------------------------------------------------


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(content)).pages)


def test_it_marks_a_draft_pdf_draft_without_a_number(world: World) -> None:
    draft = Invoice.objects.get(office=world.office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
    assert draft.number in (None, "")
    with at(T1):
        response = world.get(world.admin, f"invoices/{draft.pk}/pdf/")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    text = pdf_text(response.content)
    assert "DRAFT" in text
    assert not NUMBER.search(text), text
    assert NUMBER.search(response["Content-Disposition"]) is None


def test_it_prints_number_office_totals_and_billing_refs_on_a_finalized_pdf(world: World) -> None:
    with at(RUN):
        billing_run(as_of=RUN)
        invoice = Invoice.objects.get(office=world.office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
        response = world.get(world.admin, f"invoices/{invoice.pk}/pdf/")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert invoice.number and NUMBER.fullmatch(invoice.number)
    assert invoice.total_cents == 15000  # 2 × 450 and the minimum adjustment up to 15000
    text = pdf_text(response.content)
    flat = " ".join(text.split())
    assert invoice.number in flat
    assert "DRAFT" not in text
    assert world.office.name in flat
    assert money(invoice.subtotal_cents, invoice.currency) in flat
    assert money(invoice.total_cents, invoice.currency) in flat
    assert money(450, invoice.currency) in flat
    for patient in world.patients:
        assert patient.billing_ref in flat
    assert invoice.number in response["Content-Disposition"]
