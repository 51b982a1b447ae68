"""The OpenAPI schema against the running API (spec §10), with schemathesis.

The schema is loaded from `/api/schema/` through the Django WSGI application (in-process,
inside the test's transaction). For every operation, schemathesis generates requests from
the schema — once with random path ids (mostly unknown objects) and once with the ids of a
small real world (office, patient, invoice, user) — and sends them as an operator, an
office billing admin and an office staff member, with API tokens. Every response must:

- never be a server error (5xx);
- when its status code is documented, have the documented content type and a body that
  validates against the documented schema.

Status codes the schema does not document (400/403/404/409 …) are counted and printed,
not failed on: drf-spectacular documents successes only unless a view says more; the
list is the schema owners' to-do. The run is bounded (examples per operation below) and
derandomized, so it takes the same time and requests on every run.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from guardian.shortcuts import assign_perm
from hypothesis import HealthCheck, Phase, given, settings
from knox.models import AuthToken
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from billing.models import Invoice
from billing.services import invoice_create_one_off, patient_activate, subscription_create
from billing.tests.support.factories import OfficeFactory, PlanFactory, professional_plan
from config.wsgi import application
from offices.models import Role
from patients.services import patient_create

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = 5  # per pass and per user: keeps the whole run well under 60 s
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
PASSWORD = "pw-schemathesis-1234"
METHOD_ORDER = {"get": 0, "post": 1, "patch": 2, "delete": 3}
# Operations that call Stripe synchronously: billing/tests/stripe/test_push.py runs them
# against localstripe (billing/stripe/gateway.py refuses calls inside a transaction, and
# this test runs in one).
STRIPE_BACKED = {"/api/v1/offices/{office_id}/payment-method-session/"}


@dataclass
class Findings:
    requests: int = 0
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    undocumented: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


@pytest.fixture
def wsgi_in_test_transaction() -> Any:
    """The WSGI handler closes the connection around each request when it is not in
    autocommit, which the test's transaction never is: keep it open, as Django's own test
    client does."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def build_world() -> dict[str, Any]:
    """One subscribed office with an active patient and a one-off invoice; users by role."""
    users = get_user_model().objects
    operator = users.create_user(username="st-operator", password=PASSWORD, is_staff=True)
    admin = users.create_user(username="st-admin", password=PASSWORD)
    staff = users.create_user(username="st-staff", password=PASSWORD)
    member = users.create_user(username="st-member", password=PASSWORD)  # the one members/ may revoke
    professional_plan()
    PlanFactory(code="basic", name="Basic", per_patient_cents=300)
    office = OfficeFactory(name="Schema Clinic", timezone="America/Chicago")
    assign_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", admin, office)
    assign_perm(f"offices.{Role.OFFICE_STAFF}", staff, office)
    assign_perm(f"offices.{Role.OFFICE_STAFF}", member, office)
    subscription_create(office=office, plan_code="professional")
    patient = patient_create(
        office=office, first_name="Ada", last_name="Schema", date_of_birth=date(1980, 1, 2), mrn="ST-1"
    )
    patient_activate(patient=patient)
    invoice_create_one_off(office=office, lines=[{"description": "Training", "amount_cents": 5000}])
    invoice = Invoice.objects.filter(office=office).order_by("-id").first()
    assert invoice is not None
    return {
        "users": {"operator": operator, "billing_admin": admin, "office_staff": staff},
        "ids": {"office_id": office.pk, "patient_id": patient.pk, "invoice_id": invoice.pk, "user_id": member.pk},
    }


def token_for(user: Any) -> str:
    # Issued directly: Django's test client would reconnect the signals the fixture removed
    # (the token endpoint itself is config/tests/test_auth.py's).
    return str(AuthToken.objects.create(user=user)[1])


def exercise(operation: Any, headers: dict[str, str], path_parameters: dict[str, Any], found: Findings) -> None:
    label = operation.label
    documented = {str(code) for code in operation.definition.raw.get("responses", {})}

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(path_parameters=path_parameters or None))
    def one(case: Any) -> None:
        # A savepoint per request: on PostgreSQL one failed statement would abort the
        # test's transaction and turn every later request into a 500 as well.
        savepoint = transaction.savepoint()
        response = case.call(headers=headers)
        if response.status_code >= 500:
            transaction.savepoint_rollback(savepoint)
        else:
            transaction.savepoint_commit(savepoint)
        found.requests += 1
        found.statuses[label][response.status_code] += 1
        if str(response.status_code) not in documented and "default" not in documented:
            found.undocumented[label].add(response.status_code)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            body = response.content[:300].decode("utf-8", "replace")
            sent = json.dumps({"query": case.query, "body": case.body}, default=str)[:300]
            for failure in group.exceptions:
                found.failures[label].append(
                    f"{case.method} {case.formatted_path} {sent} → {response.status_code}: {failure.title}: "
                    f"{' '.join(failure.message.split())[:600]} | body: {' '.join(body.split())}"
                )

    one()


@pytest.mark.usefixtures("wsgi_in_test_transaction")
def test_it_answers_schema_generated_requests_without_5xx_and_as_documented(settings: Any) -> None:
    # This test is about the schema, not rate limits (config/tests/test_security.py).
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"login": "1000/min", "api": "100000/min"},
    }
    cache.clear()
    world = build_world()
    tokens = {role: token_for(user) for role, user in world["users"].items()}
    schema = schemathesis.openapi.from_wsgi(
        "/api/schema/?format=json", application, headers={"Authorization": f"Token {tokens['operator']}"}
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    # Reads first, deletions last: a cancelled subscription would turn later calls into 409s.
    operations.sort(key=lambda op: (METHOD_ORDER.get(op.method.lower(), 9), op.path))

    found = Findings()
    started = time.monotonic()
    for operation in operations:
        if operation.path.startswith("/api/v1/auth/"):
            continue  # would revoke the tokens this run uses; covered by config/tests/test_auth.py
        if operation.path in STRIPE_BACKED:
            continue  # calls Stripe, which refuses to be called inside the test's transaction
        names = {p.name for p in operation.path_parameters}
        real_ids = {name: world["ids"][name] for name in names if name in world["ids"]}
        for token in tokens.values():
            headers = {"Authorization": f"Token {token}"}
            exercise(operation, headers, {}, found)  # random ids: mostly 404s
            if real_ids:
                exercise(operation, headers, real_ids, found)  # the world's objects: 2xx bodies
    elapsed = time.monotonic() - started

    print(f"\nschemathesis: {len(operations)} operations, {found.requests} requests in {elapsed:.1f} s")
    for label in sorted(found.statuses):
        codes = dict(sorted(found.statuses[label].items()))
        extra = f"  undocumented: {sorted(found.undocumented[label])}" if found.undocumented.get(label) else ""
        print(f"  {label}: {codes}{extra}")
    for label, failures in sorted(found.failures.items()):
        print(f"FAILURES {label}:")
        for line in sorted(set(failures)):
            print(f"  {line}")
    assert dict(found.failures) == {}, json.dumps(found.failures, indent=1)[:20000]
    assert not any(code >= 500 for counts in found.statuses.values() for code in counts)
    assert elapsed < 60
