"""Who may do what through the API (spec §1, §10): every endpoint × method × role.

The matrix below is the specification of access, one test per cell. Objects under test
belong to office A. Roles:

- anonymous: no session;
- office_staff: `office_staff` of office A;
- billing_admin: `office_billing_admin` of office A;
- other_admin: `office_billing_admin` of office B only (for office A's objects: 404, never 403);
- auditor: in the `compliance_auditor` group (global, no office role);
- operator: a staff user (not a superuser).

Where the spec is silent the cell says what we chose and why (comments marked CHOICE).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from guardian.shortcuts import assign_perm
from rest_framework.settings import api_settings

from audit.services import audit_record
from billing.models import Invoice, InvoiceKind
from billing.services import invoice_create_one_off, patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, professional_plan
from config.urls import api_v1
from offices.models import COMPLIANCE_AUDITOR_GROUP, Office, Role
from offices.selectors import offices_for_user

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)  # office A subscribes (when a cell needs it)
T1 = T0 + timedelta(days=5)  # every request of the matrix is made now

ROLES = ("anonymous", "office_staff", "billing_admin", "other_admin", "auditor", "operator")


def _anonymous_status() -> int:
    """401 when the first authentication scheme sends a challenge, else 403 (spec §1).

    Session authentication sends none, so DRF answers 403; token authentication would
    make it 401. Every anonymous cell must get this one code."""
    scheme = api_settings.DEFAULT_AUTHENTICATION_CLASSES[0]()
    return 401 if scheme.authenticate_header(None) else 403


ANON = _anonymous_status()


# --- The world every cell starts from --------------------------------------------------


@dataclass
class World:
    office_a: Office
    office_b: Office
    users: dict[str, Any]
    ctx: dict[str, Any] = field(default_factory=dict)

    def client(self, role: str) -> Client:
        client = Client()
        user = self.users.get(role)
        if user is not None:
            client.force_login(user)  # under the frozen clock of the request (idle timeout)
        return client


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw-matrix-1234", **extra)


def build_world() -> World:
    professional_plan()
    PlanFactory(code="basic", name="Basic", per_patient_cents=300)
    office_a = OfficeFactory(name="Office A", timezone="America/Chicago")
    office_b = OfficeFactory(name="Office B", timezone="America/Chicago")
    staff = make_user("staff_a")
    admin = make_user("admin_a")
    other = make_user("admin_b")
    auditor = make_user("auditor")
    auditor.groups.add(Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)[0])
    op = make_user("operator", is_staff=True)
    assign_perm(f"offices.{Role.OFFICE_STAFF}", staff, office_a)
    assign_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", admin, office_a)
    assign_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", other, office_b)
    users = {
        "anonymous": None,
        "office_staff": staff,
        "billing_admin": admin,
        "other_admin": other,
        "auditor": auditor,
        "operator": op,
    }
    return World(office_a=office_a, office_b=office_b, users=users, ctx={"A": office_a.pk, "B": office_b.pk})


@pytest.fixture
def world() -> World:
    with at(T0 - timedelta(days=10)):
        return build_world()


# --- State a cell needs before its request ---------------------------------------------


def subscribed(w: World) -> dict[str, Any]:
    """Office A on `professional` since T0: a finalized setup-fee invoice and a cycle draft."""
    with at(T0):
        subscription_create(office=w.office_a, plan_code="professional")
    setup = Invoice.objects.get(office=w.office_a, kind=InvoiceKind.ONE_OFF)
    return {"inv": setup.pk}


def reviewed(w: World) -> dict[str, Any]:
    """One access review of the ten days before T0, recorded by the auditor."""
    from compliance.services import access_review_record

    with at(T0):
        review = access_review_record(
            reviewer=w.users["auditor"],
            period_start=T0 - timedelta(days=10),
            period_end=T0 - timedelta(days=1),
            findings="No findings.",
        )
    return {"rid": review.pk}


def inactive_patient(w: World) -> dict[str, Any]:
    with at(T0 - timedelta(days=1)):
        patient = PatientFactory(office=w.office_a)
    return {"pid": patient.pk}


def active_patient(w: World) -> dict[str, Any]:
    with at(T0 - timedelta(days=1)):
        patient = PatientFactory(office=w.office_a)
        patient_activate(patient=patient)
    return {"pid": patient.pk}


def member(w: World) -> dict[str, Any]:
    """A user holding a role in office A (the one a DELETE revokes)."""
    user = make_user("member_a")
    assign_perm(f"offices.{Role.OFFICE_STAFF}", user, w.office_a)
    return {"uid": user.pk}


def grantee(w: World) -> dict[str, Any]:
    """A user with no role yet (the one a POST members/ grants)."""
    return {"uid": make_user("grantee").pk}


# --- The matrix --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # {A} office A, {pid} patient, {inv} invoice, {uid} user, {rid} access review
    expect: tuple[int, int, int, int, int, int]  # in ROLES order
    given: tuple[Callable[[World], dict[str, Any]], ...] = ()
    body: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    @property
    def name(self) -> str:
        return f"{self.method.upper()} {self.path}"

    def expected(self, role: str) -> int:
        return self.expect[ROLES.index(role)]


NEW_PLAN = {
    "code": "matrix-new",
    "name": "Matrix new",
    "currency": "usd",
    "per_patient_cents": 500,
    "minimum_cents": 0,
    "setup_fee_cents": 0,
    "trial_days": 0,
}
NEW_OFFICE = {"name": "New Office", "timezone": "America/Denver", "billing_email": "billing@new.example"}
NEW_PATIENT = {"first_name": "Ada", "last_name": "Matrix", "date_of_birth": "1970-01-01", "mrn": "MRN-MATRIX-1"}
ONE_OFF = {"lines": [{"description": "Onboarding training", "amount_cents": 25000}]}

# fmt: off
MATRIX: list[Row] = [
    #   method  path                                          anon  staff admin other audit oper
    # CHOICE: plans are a global catalogue, not office A's object: B's billing admin lists them (200);
    # the auditor's remit is the audit trail and the office list, so plans are 403 for them.
    Row("get", "plans/",                                   (ANON, 403, 200, 200, 403, 200)),
    Row("post", "plans/",                                  (ANON, 403, 403, 403, 403, 201), body=lambda c: NEW_PLAN),
    # Lists are scoped (checked separately); everyone signed in gets 200.
    Row("get", "offices/",                                 (ANON, 200, 200, 200, 200, 200)),
    Row("post", "offices/",                                (ANON, 403, 403, 403, 403, 201), body=lambda c: NEW_OFFICE),
    # CHOICE: office detail is the same record the office list shows, so whoever lists
    # office A may read it (staff included: it carries no amounts or payment data).
    Row("get", "offices/{A}/",                             (ANON, 200, 200, 404, 200, 200)),
    # Spec §10: a grant is an action → 200 with the object (not 201).
    Row("post", "offices/{A}/members/",                    (ANON, 403, 403, 404, 403, 200), given=(grantee,),
        body=lambda c: {"user": c["uid"], "role": Role.OFFICE_STAFF}),
    Row("delete", "offices/{A}/members/{uid}/",            (ANON, 403, 403, 404, 403, 204), given=(member,)),
    Row("get", "offices/{A}/subscription/",                (ANON, 403, 200, 404, 403, 200), given=(subscribed,)),
    Row("post", "offices/{A}/subscription/",               (ANON, 403, 201, 404, 403, 201),
        body=lambda c: {"plan": "professional"}),
    Row("patch", "offices/{A}/subscription/",              (ANON, 403, 200, 404, 403, 200), given=(subscribed,),
        body=lambda c: {"plan": "basic"}),
    Row("delete", "offices/{A}/subscription/",             (ANON, 403, 200, 404, 403, 200), given=(subscribed,)),
    # Immediate cancellation is the operators' (spec §8): 403 for the office's own billing admin.
    Row("delete", "offices/{A}/subscription/?immediately=true",
                                                           (ANON, 403, 403, 404, 403, 200), given=(subscribed,)),
    # CHOICE: the patient list is the staff's (clinical) and the operators' (refs only);
    # a billing admin sees patients by billing ref on the invoices and gets 403 here
    # (minimum necessary), like the auditor.
    Row("get", "offices/{A}/patients/",                    (ANON, 200, 403, 404, 403, 200), given=(active_patient,)),
    Row("post", "offices/{A}/patients/",                   (ANON, 201, 403, 404, 403, 403), body=lambda c: NEW_PATIENT),
    # An object addressed by id answers an auditor (no role in its office) as if it did not
    # exist, so ids cannot be enumerated across offices (issue 8, item 18).
    Row("post", "patients/{pid}/activate/",                (ANON, 200, 403, 404, 404, 403), given=(inactive_patient,)),
    Row("post", "patients/{pid}/deactivate/",              (ANON, 200, 403, 404, 404, 403), given=(active_patient,)),
    Row("get", "offices/{A}/invoices/",                    (ANON, 403, 200, 404, 403, 200), given=(subscribed,)),
    Row("get", "invoices/{inv}/",                          (ANON, 403, 200, 404, 404, 200), given=(subscribed,)),
    Row("get", "invoices/{inv}/pdf/",                      (ANON, 403, 200, 404, 404, 200), given=(subscribed,)),
    Row("get", "offices/{A}/payment-status/",              (ANON, 403, 200, 404, 403, 200), given=(subscribed,)),
    # A write-off is the operators' (spec §12): the office's own billing admin may not.
    Row("post", "invoices/{inv}/mark-uncollectible/",      (ANON, 403, 403, 404, 404, 200), given=(subscribed,),
        body=lambda c: {"reason": "Written off in the matrix"}),
    Row("post", "offices/{A}/one-off-invoices/",           (ANON, 403, 403, 404, 403, 201), given=(subscribed,),
        body=lambda c: ONE_OFF),
    # A billing admin reads their own offices' events: B's admin gets 200 with B's events
    # only (scoping checked separately); staff hold no billing role anywhere → 403.
    Row("get", "audit-events/",                            (ANON, 403, 200, 200, 200, 200), given=(subscribed,)),
    # Stripe is unreachable here (the test settings point it at a closed port): roles that
    # may open the Stripe-hosted page get the 503 that says so; the page itself is tested
    # against localstripe in billing/tests/stripe/test_push.py.
    Row("post", "offices/{A}/payment-method-session/",     (ANON, 403, 503, 404, 403, 503), body=lambda c: {}),
    Row("get", "audit-events/export/",                     (ANON, 403, 200, 200, 200, 200), given=(subscribed,)),
    # Access reviews (issue 12) are the compliance auditors' and the operators' only.
    Row("get", "access-reviews/",                          (ANON, 403, 403, 403, 200, 200), given=(reviewed,)),
    Row("post", "access-reviews/",                         (ANON, 403, 403, 403, 201, 201),
        body=lambda c: {"period_start": "2026-03-01T00:00:00+00:00", "period_end": "2026-03-02T00:00:00+00:00",
                        "findings": "No findings."}),
    Row("get", "access-reviews/{rid}/export/",             (ANON, 403, 403, 403, 200, 200), given=(reviewed,)),
]
# fmt: on

CELLS = [pytest.param(row, role, id=f"{row.name} as {role}") for row in MATRIX for role in ROLES]


def request(client: Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url = "/api/v1/" + path
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, data=json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(("row", "role"), CELLS)
def test_it_answers_each_role_as_the_matrix_says(world: World, row: Row, role: str, settings: Any) -> None:
    # Each cell runs inside the test's transaction; the gateway's refusal to call Stripe
    # inside one (tested in billing/tests/stripe/test_push.py) is lifted for the matrix.
    settings.STRIPE_ALLOW_IN_TRANSACTION = True
    ctx = dict(world.ctx)
    for step in row.given:
        ctx.update(step(world))
    body = row.body(ctx) if row.body else None
    with at(T1):
        response = request(world.client(role), row.method, row.path.format(**ctx), body)
    expected = row.expected(role)
    assert response.status_code == expected, (
        f"{row.name} as {role}: expected {expected}, got {response.status_code}: {response.content[:300]!r}"
    )


def _route(path: str) -> str:
    return (
        path.split("?")[0]
        .replace("{A}", "<int:office_id>")
        .replace("{pid}", "<int:patient_id>")
        .replace("{inv}", "<int:invoice_id>")
        .replace("{uid}", "<int:user_id>")
        .replace("{rid}", "<int:review_id>")
    )


def test_it_covers_every_api_endpoint_and_method_for_every_role() -> None:
    served = set()
    for pattern in api_v1:
        view = pattern.callback.view_class  # type: ignore[attr-defined]
        for method in view.http_method_names:
            if method not in ("options", "head") and hasattr(view, method):
                served.add((method, str(pattern.pattern)))
    covered = {(row.method, _route(row.path)) for row in MATRIX}
    assert served == covered, f"not in the matrix: {served - covered}; not served: {covered - served}"
    assert len(CELLS) == len(MATRIX) * len(ROLES)
    print(f"authorization matrix: {len(MATRIX)} endpoint×method rows × {len(ROLES)} roles = {len(CELLS)} cells")


def test_it_answers_anonymous_requests_with_one_code_that_is_401_or_403() -> None:
    assert ANON in (401, 403)
    assert {row.expected("anonymous") for row in MATRIX} == {ANON}


# --- Scoping of what a 200 shows -------------------------------------------------------


def _ids(response: Any) -> set[int]:
    assert response.status_code == 200, response.content[:300]
    return {item["id"] for item in response.json()["results"]}


def test_it_lists_only_the_offices_a_user_holds_a_role_in(world: World) -> None:
    with at(T1):
        assert _ids(request(world.client("other_admin"), "get", "offices/")) == {world.office_b.pk}
        assert _ids(request(world.client("office_staff"), "get", "offices/")) == {world.office_a.pk}
        assert _ids(request(world.client("billing_admin"), "get", "offices/")) == {world.office_a.pk}
        everyone = {world.office_a.pk, world.office_b.pk}
        assert _ids(request(world.client("auditor"), "get", "offices/")) == everyone
        assert _ids(request(world.client("operator"), "get", "offices/")) == everyone


def test_it_shows_a_billing_admin_only_their_own_offices_audit_events(world: World) -> None:
    subscribed(world)
    with at(T0):
        subscription_create(office=world.office_b, plan_code="basic")
    with at(T1):
        events = request(world.client("other_admin"), "get", "audit-events/?page_size=500").json()["results"]
        assert events and {e["office_id"] for e in events} == {world.office_b.pk}
        events = request(world.client("auditor"), "get", "audit-events/?page_size=500").json()["results"]
        assert {world.office_a.pk, world.office_b.pk} <= {e["office_id"] for e in events}


def test_it_shows_operators_only_billing_ref_and_status_of_patients(world: World) -> None:
    active_patient(world)
    with at(T1):
        rows = request(world.client("operator"), "get", "offices/{A}/patients/".format(**world.ctx)).json()
        staff_rows = request(world.client("office_staff"), "get", "offices/{A}/patients/".format(**world.ctx)).json()
    assert [set(r) for r in rows["results"]] == [{"id", "billing_ref", "is_active"}]
    assert {"first_name", "last_name", "date_of_birth", "mrn"} <= set(staff_rows["results"][0])


def test_it_does_not_let_a_global_billing_admin_permission_reveal_an_office(world: World) -> None:
    """guardian's accept_global_perms pitfall: a model-level permission is no office role."""
    subscribed(world)
    user = make_user("global_admin")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="offices", codename=Role.OFFICE_BILLING_ADMIN)
    )
    invoice = Invoice.objects.filter(office=world.office_a).first()
    assert invoice is not None
    client = Client()
    with at(T1):
        client.force_login(user)
        for path in (
            f"offices/{world.office_a.pk}/",
            f"offices/{world.office_a.pk}/subscription/",
            f"offices/{world.office_a.pk}/invoices/",
            f"offices/{world.office_a.pk}/payment-status/",
            f"offices/{world.office_a.pk}/patients/",
            f"invoices/{invoice.pk}/",
            f"invoices/{invoice.pk}/pdf/",
        ):
            response = request(client, "get", path)
            assert response.status_code == 404, (path, response.status_code)
        assert _ids(request(client, "get", "offices/")) == set()
        assert request(client, "get", "plans/").status_code == 403
        assert request(client, "get", "audit-events/").status_code == 403


def test_it_answers_404_on_the_next_request_after_a_membership_is_removed(world: World) -> None:
    subscribed(world)
    admin = world.users["billing_admin"]
    path = f"offices/{world.office_a.pk}/invoices/"
    with at(T1):
        client = world.client("billing_admin")
        assert request(client, "get", path).status_code == 200
        revoke = request(world.client("operator"), "delete", f"offices/{world.office_a.pk}/members/{admin.pk}/")
        assert revoke.status_code == 204
        assert request(client, "get", path).status_code == 404
        assert request(client, "get", f"offices/{world.office_a.pk}/").status_code == 404
        assert _ids(request(client, "get", "offices/")) == set()


def test_it_revokes_one_role_with_the_role_parameter(world: World) -> None:
    user = world.users["office_staff"]
    assign_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", user, world.office_a)
    subscribed(world)
    with at(T1):
        client = world.client("office_staff")
        assert request(client, "get", f"offices/{world.office_a.pk}/invoices/").status_code == 200
        path = f"offices/{world.office_a.pk}/members/{user.pk}/?role={Role.OFFICE_BILLING_ADMIN}"
        assert request(world.client("operator"), "delete", path).status_code == 204
        assert request(client, "get", f"offices/{world.office_a.pk}/invoices/").status_code == 403
        assert request(client, "get", f"offices/{world.office_a.pk}/patients/").status_code == 200


# --- Constant query counts on lists ----------------------------------------------------


def _grow_offices_for_operator(w: World, n: int) -> None:
    while Office.objects.count() < n:
        OfficeFactory()


def _grow_offices_of_admin(w: World, n: int) -> None:
    """The billing admin holds the role in n offices, each with one audit event."""
    admin = w.users["billing_admin"]
    while offices_for_user(admin).count() < n:
        office = OfficeFactory()
        assign_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", admin, office)
        audit_record(action="test.filler", target=office, office_id=office.pk)


def _grow_invoices(w: World, n: int) -> None:
    while Invoice.objects.filter(office=w.office_a).count() < n:
        invoice_create_one_off(office=w.office_a, lines=[{"description": "Training", "amount_cents": 1000}])


def _grow_patients(w: World, n: int) -> None:
    while w.office_a.patients.count() < n:
        patient = PatientFactory(office=w.office_a)
        if patient.pk % 2:
            patient_activate(patient=patient)


def _grow_plans(w: World, n: int) -> None:
    from billing.models import Plan

    while Plan.objects.count() < n:
        PlanFactory()


def _grow_audit_events(w: World, n: int) -> None:
    from audit.models import AuditEvent

    while AuditEvent.objects.count() < n:
        audit_record(action="test.filler", target=w.office_a, office_id=w.office_a.pk)


LISTS = [
    pytest.param("operator", "offices/", _grow_offices_for_operator, id="offices as operator"),
    pytest.param("billing_admin", "offices/", _grow_offices_of_admin, id="offices as admin of N offices"),
    pytest.param("billing_admin", "offices/{A}/invoices/", _grow_invoices, id="invoices as admin"),
    pytest.param("operator", "offices/{A}/invoices/", _grow_invoices, id="invoices as operator"),
    pytest.param("office_staff", "offices/{A}/patients/", _grow_patients, id="patients as staff"),
    pytest.param("operator", "offices/{A}/patients/", _grow_patients, id="patients as operator"),
    pytest.param("operator", "plans/", _grow_plans, id="plans as operator"),
    pytest.param("billing_admin", "plans/", _grow_plans, id="plans as admin"),
    pytest.param("auditor", "audit-events/", _grow_audit_events, id="audit events as auditor"),
    pytest.param("billing_admin", "audit-events/", _grow_offices_of_admin, id="audit events as admin of N offices"),
]


@pytest.mark.parametrize(("role", "path", "grow"), LISTS)
def test_it_lists_with_a_constant_number_of_queries(
    world: World, role: str, path: str, grow: Callable[[World, int], None]
) -> None:
    url = path.format(**world.ctx)

    def count() -> tuple[int, int]:
        client = world.client(role)
        request(client, "get", url)  # warm-up: first-request caches (content types, session) settle
        with CaptureQueriesContext(connection) as queries:
            response = request(client, "get", url)
        assert response.status_code == 200, response.content[:300]
        return len(queries), response.json()["count"]

    with at(T1):
        grow(world, 3)
        few, few_rows = count()
        grow(world, 30)
        many, many_rows = count()
    assert many_rows > few_rows
    assert few == many, f"GET {path} as {role}: {few} queries for {few_rows} rows, {many} for {many_rows} rows"


def test_it_treats_a_superuser_as_an_operator_without_clinical_access(world: World) -> None:
    """Spec §1: superusers count as operators; guardian grants them every permission, which
    must not turn into the office_staff role (no clinical work, no clinical fields)."""
    ctx = {**world.ctx, **subscribed(world), **active_patient(world)}
    fresh = inactive_patient(world)["pid"]
    root = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    with at(T1):
        client.force_login(root)
        assert request(client, "get", "offices/{A}/invoices/".format(**ctx)).status_code == 200
        assert request(client, "get", "invoices/{inv}/".format(**ctx)).status_code == 200
        listed = request(client, "get", "offices/{A}/patients/".format(**ctx))
        assert listed.status_code == 200
        assert {key for row in listed.json()["results"] for key in row} == {"id", "billing_ref", "is_active"}
        assert request(client, "post", "offices/{A}/patients/".format(**ctx), NEW_PATIENT).status_code == 403
        assert request(client, "post", f"patients/{fresh}/activate/").status_code == 403
        assert request(client, "post", "patients/{pid}/deactivate/".format(**ctx)).status_code == 403


# --- Ids cannot be enumerated (issue 8, item 18) -----------------------------------------


@pytest.mark.parametrize("who", ["auditor", "other_admin"])
def test_it_answers_an_existing_object_it_hides_exactly_like_a_missing_one(world: World, who: str) -> None:
    ctx = {**subscribed(world), **active_patient(world)}
    client = world.client(who)
    for existing, missing, method in (
        (f"invoices/{ctx['inv']}/", "invoices/987654/", "get"),
        (f"invoices/{ctx['inv']}/pdf/", "invoices/987654/pdf/", "get"),
        (f"patients/{ctx['pid']}/deactivate/", "patients/987654/deactivate/", "post"),
    ):
        hidden, absent = request(client, method, existing), request(client, method, missing)
        assert (hidden.status_code, hidden.json()) == (absent.status_code, absent.json()), existing
        assert hidden.status_code == 404 and "Office" not in hidden.json()["message"]
