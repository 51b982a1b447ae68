"""Every audited action of spec §9 that this flow can reach, with the fields an auditor
needs: who, what, target, office, when, where (request id and IP, or system), outcome —
and no PHI. Stripe-side actions (pushed, payment succeeded/failed/out of band, webhook
received/rejected, reconciliation mismatch) are asserted in billing/tests/stripe/test_push.py,
test_webhooks.py, test_dunning.py and test_reconcile.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from audit.models import AuditEvent
from billing.engine.run import billing_run
from billing.tests.support.factories import OfficeFactory, at, professional_plan
from offices.models import Role
from offices.services import office_member_grant

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 10, 15, tzinfo=UTC)
PHI = ("Zebulonquux", "Ardvarkian", "MRN-ACT-9", "1931-02-03", "phi.actions@example.com", "5550137731")


def api(client: Client, method: str, path: str, body: dict | None = None, **extra: str):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    return getattr(client, method)("/api/v1/" + path, **kwargs, **extra)


def test_it_records_each_action_with_who_what_where_outcome_and_no_phi():
    User = get_user_model()
    operator = User.objects.create_user(username="op", password="pw-op-123456", is_staff=True)
    staff = User.objects.create_user(username="staff", password="pw-staff-123456")
    admin = User.objects.create_user(username="billing", password="pw-billing-123456")
    professional_plan()
    office = OfficeFactory(timezone="UTC")
    o, s, a = Client(REMOTE_ADDR="198.51.100.7"), Client(), Client()

    def log_in() -> None:  # sessions expire after 15 idle minutes, and the clock jumps
        o.force_login(operator)
        s.force_login(staff)
        a.force_login(admin)

    with at(T0 - timedelta(days=1)):
        log_in()
        office_member_grant(office=office, user=staff, role=Role.OFFICE_STAFF, actor=operator)
        assert (
            api(
                o, "post", f"offices/{office.pk}/members/", {"user": admin.pk, "role": "office_billing_admin"}
            ).status_code
            == 200
        )
        assert (
            api(
                o, "post", "plans/", {"code": "basic", "name": "Basic", "currency": "usd", "per_patient_cents": 300}
            ).status_code
            == 201
        )
        patient = api(
            s,
            "post",
            f"offices/{office.pk}/patients/",
            {
                "first_name": PHI[0],
                "last_name": PHI[1],
                "mrn": PHI[2],
                "date_of_birth": PHI[3],
                "email": PHI[4],
                "phone": PHI[5],
            },
        ).json()
        assert api(s, "post", f"patients/{patient['id']}/activate/").status_code == 200
        second = api(
            s,
            "post",
            f"offices/{office.pk}/patients/",
            {
                "first_name": "Other",
                "last_name": "Person",
                "mrn": "MRN-ACT-10",
                "date_of_birth": "1950-05-05",
            },
        ).json()
        api(s, "get", f"offices/{office.pk}/patients/")
    with at(T0):
        log_in()
        assert api(a, "post", f"offices/{office.pk}/subscription/", {"plan": "professional"}).status_code == 201
        assert api(a, "patch", f"offices/{office.pk}/subscription/", {"plan": "basic"}).status_code == 200
        assert api(s, "post", f"patients/{patient['id']}/deactivate/").status_code == 200
        assert api(s, "post", f"patients/{patient['id']}/activate/").status_code == 200
    with at(T0 + timedelta(days=3)):
        log_in()
        assert api(s, "post", f"patients/{second['id']}/activate/").status_code == 200  # a line on the draft
    with at(datetime(2026, 4, 10, 16, tzinfo=UTC)):
        log_in()
        billing_run()
        invoices = api(a, "get", f"offices/{office.pk}/invoices/").json()["results"]
        open_one = next(i for i in invoices if i["status"] == "open")
        api(a, "get", f"invoices/{open_one['id']}/")
        one_off = api(
            o,
            "post",
            f"offices/{office.pk}/one-off-invoices/",
            {"lines": [{"description": "Training", "amount_cents": 5000}]},
        )
        assert one_off.status_code == 201
        refused = api(
            o,
            "post",
            f"offices/{office.pk}/one-off-invoices/",
            {"lines": [{"description": f"Visit of {PHI[1]}", "amount_cents": 5000}]},
        )
        assert refused.status_code == 400
        assert api(a, "delete", f"offices/{office.pk}/subscription/").status_code == 200
        Client().post(
            "/api/v1/auth/token/", {"username": "billing", "password": "wrong"}, content_type="application/json"
        )

    events = list(AuditEvent.objects.order_by("id"))
    by_action: dict[str, list[AuditEvent]] = {}
    for e in events:
        by_action.setdefault(e.action, []).append(e)
    expected_user_actions = {
        "permission.granted": operator,
        "plan.created": operator,
        "patient.created": staff,
        "patient.activated": staff,
        "patient.deactivated": staff,
        "patient.list_viewed": staff,
        "subscription.created": admin,
        "subscription.plan_changed": admin,
        "subscription.cancel_scheduled": admin,
        "invoice.list_viewed": admin,
        "invoice.viewed": admin,
        "invoice.one_off_created": operator,
        "phi_guard.refused": operator,
    }
    for action, user in expected_user_actions.items():
        assert action in by_action, f"no {action} entry"
        entry = by_action[action][-1]
        assert (entry.actor_type, entry.actor_id, entry.actor_label) == ("user", str(user.pk), user.get_username()), (
            action
        )
        assert entry.target_type and entry.target_id, action
        assert entry.request_id, f"{action} has no request id"
        assert entry.ts is not None and entry.outcome in ("success", "denied", "failure"), action
        if action != "plan.created":
            assert entry.office_id == office.pk, action
    assert by_action["phi_guard.refused"][-1].outcome == "denied"
    first_grant, api_grant = by_action["permission.granted"]
    assert first_grant.source_ip is None and not first_grant.request_id  # a service call outside any request
    assert api_grant.source_ip == "198.51.100.7"  # the validated client address of the request
    assert by_action["invoice.one_off_created"][-1].source_ip == "198.51.100.7"
    for action in ("invoice.opened", "invoice.finalized", "billing_run.started", "billing_run.finished"):
        entry = by_action[action][-1]
        assert entry.actor_type == "system" and entry.outcome == "success", action
    assert by_action["invoice.opened"][-1].data["line_count"] == 2  # one entry per invoice, not per line
    assert {"invoices_finalized", "invoices_opened", "lines_created"} <= set(by_action["billing_run.finished"][-1].data)
    assert "invoice.activation_line_added" in by_action
    assert by_action["auth.login_failed"][-1].outcome == "denied"
    assert any(e.action == "auth.login" for e in events)
    dump = json.dumps([[e.actor_label, e.action, e.target_type, e.target_id, e.reason, e.data] for e in events]).lower()
    for value in PHI:
        assert value.lower() not in dump, value
