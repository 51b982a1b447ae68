"""`manage.py seed_demo`: the demo data of `make run`, built through the services, idempotent."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from guardian.models import UserObjectPermission
from guardian.shortcuts import get_objects_for_user

from audit.models import AuditEvent
from billing.models import BillingRun, Invoice, InvoiceKind, InvoiceStatus, LineItem, LineKind, Plan
from offices.models import COMPLIANCE_AUDITOR_GROUP, Office, Role, SubscriptionStatus
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db
User = get_user_model()
OFFICE_SLUGS = {
    "manhattan": "America/New_York",
    "chicago": "America/Chicago",
    "los-angeles": "America/Los_Angeles",
}


def seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def printed_passwords(output: str) -> dict[str, str]:
    """username → password from the login table (last column)."""
    rows = {}
    for line in output.splitlines():
        m = re.match(r"^\s+(\S+)\s+.*\s([A-Za-z0-9]{16})$", line)
        if m and m.group(1) != "username":
            rows[m.group(1)] = m.group(2)
    return rows


def office_of(slug: str) -> Office:
    user = User.objects.get(username=f"{slug}-billing")
    return get_objects_for_user(user, f"offices.{Role.OFFICE_BILLING_ADMIN}", accept_global_perms=False).get()


def test_it_seeds_plans_offices_patients_users_a_run_and_invoices():
    output = seed()

    plans = {p.code: p for p in Plan.objects.all()}
    assert set(plans) == {"starter", "professional", "enterprise"}
    assert (plans["starter"].per_patient_cents, plans["starter"].minimum_cents) == (300, 0)
    assert (plans["professional"].per_patient_cents, plans["professional"].minimum_cents) == (450, 15000)
    assert plans["professional"].setup_fee_cents == 50000
    assert (plans["enterprise"].per_patient_cents, plans["enterprise"].minimum_cents) == (350, 100000)
    assert plans["enterprise"].trial_days == 14

    offices = list(Office.objects.all())
    assert len(offices) == 3
    assert len({o.company_id for o in offices}) == 1 and offices[0].company_id is not None
    assert {o.timezone for o in offices} == set(OFFICE_SLUGS.values())
    by_plan = {o.current_plan.code: o for o in offices if o.current_plan}
    assert by_plan["enterprise"].subscription_status == SubscriptionStatus.TRIALING
    assert by_plan["professional"].subscription_status == SubscriptionStatus.ACTIVE
    assert by_plan["starter"].subscription_status == SubscriptionStatus.ACTIVE

    assert Patient.objects.count() >= 200
    assert all(p.first_name == "Demo" and p.last_name.startswith("Patient ") for p in Patient.objects.all())
    assert ActivationInterval.objects.filter(deactivated_at__isnull=False).exists()  # some left, some came back
    assert Patient.objects.filter(intervals__isnull=True).exists()  # some never activated

    # The active offices bill: an open cycle draft; the professional one paid a setup fee.
    for office in (by_plan["professional"], by_plan["starter"]):
        draft = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
        kinds = set(draft.lines.values_list("kind", flat=True))
        assert kinds == {LineKind.RECURRING, LineKind.ACTIVATION}
        assert draft.total_cents == sum(draft.lines.values_list("amount_cents", flat=True))
    setup = Invoice.objects.get(office=by_plan["professional"], lines__kind=LineKind.SETUP_FEE)
    assert (setup.status, setup.total_cents) == (InvoiceStatus.OPEN, 50000)
    assert not Invoice.objects.filter(office=by_plan["starter"], kind=InvoiceKind.ONE_OFF).exists()
    assert not Invoice.objects.filter(office=by_plan["enterprise"]).exists()  # trial: nothing billed
    one_off = Invoice.objects.filter(kind=InvoiceKind.ONE_OFF, lines__kind=LineKind.MANUAL).distinct().get()
    assert one_off.status == InvoiceStatus.OPEN and one_off.number and one_off.total_cents > 0

    assert BillingRun.objects.count() == 1
    assert "Demo data created" in output

    # Users and roles: a billing admin and a staff user per office, an operator, an auditor.
    by_slug = {slug: office_of(slug) for slug in OFFICE_SLUGS}
    assert {slug: o.timezone for slug, o in by_slug.items()} == OFFICE_SLUGS

    for slug, office in by_slug.items():
        billing = User.objects.get(username=f"{slug}-billing")
        staff = User.objects.get(username=f"{slug}-staff")
        assert billing.has_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", office)
        assert not billing.has_perm(f"offices.{Role.OFFICE_STAFF}", office)
        assert staff.has_perm(f"offices.{Role.OFFICE_STAFF}", office)
        assert not staff.has_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", office)
        assert not (billing.is_staff or staff.is_staff)
        for other_slug, other in by_slug.items():
            if other_slug != slug:  # a role in one office is no role in another
                assert not staff.has_perm(f"offices.{Role.OFFICE_STAFF}", other)
                assert not billing.has_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", other)

    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser
    auditor = User.objects.get(username="auditor")
    assert list(auditor.groups.values_list("name", flat=True)) == [COMPLIANCE_AUDITOR_GROUP]
    assert not auditor.is_staff
    assert not any(auditor.has_perm(f"offices.{role}", o) for role in Role.values for o in by_slug.values())


def test_it_creates_nothing_the_second_time_and_prints_logins_that_work():
    first_output = seed()
    first = printed_passwords(first_output)
    expected = {"admin", "auditor"} | {f"{s}-{r}" for s in OFFICE_SLUGS for r in ("billing", "staff")}
    assert set(first) == expected
    for username, password in first.items():
        assert User.objects.get(username=username).check_password(password), username
    counts = _counts()

    output = seed()

    assert "Demo data already present: nothing created." in output
    assert _counts() == counts
    assert Office.objects.values("name").distinct().count() == 3
    second = printed_passwords(output)
    assert set(second) == expected
    for username, password in second.items():  # reset: only the latest printed password works
        user = User.objects.get(username=username)
        assert user.check_password(password), username
        assert not user.check_password(first[username])


def _counts() -> dict[str, int]:
    return {
        "offices": Office.objects.count(),
        "plans": Plan.objects.count(),
        "patients": Patient.objects.count(),
        "intervals": ActivationInterval.objects.count(),
        "invoices": Invoice.objects.count(),
        "lines": LineItem.objects.count(),
        "runs": BillingRun.objects.count(),
        "users": User.objects.count(),
        "permissions": UserObjectPermission.objects.count(),
        "audit": AuditEvent.objects.count(),
    }
