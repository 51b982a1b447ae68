"""Bad input and refused actions: each gets a clear error naming the problem and writes
nothing at all (no row of any billing table, no audit entry, no half-made invoice)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from billing.models import BillingRun, Invoice, LineItem, Plan, PlanChange
from billing.services import (
    invoice_create_one_off,
    patient_activate,
    patient_deactivate,
    plan_update,
    subscription_cancel,
    subscription_change_plan,
    subscription_create,
)
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from config.errors import ApplicationError, ConflictError, NotFoundError
from offices.models import Office
from offices.services import office_create, office_update
from patients.models import ActivationInterval

pytestmark = pytest.mark.django_db

CHI = ZoneInfo("America/Chicago")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


COUNTED = (Invoice, LineItem, ActivationInterval, PlanChange, AuditEvent, BillingRun, Office, Plan)


def _state() -> dict[str, Any]:
    return {
        "counts": {model.__name__: model.objects.count() for model in COUNTED},
        "invoices": list(Invoice.objects.order_by("id").values()),
        "offices": list(Office.objects.order_by("id").values()),
        "plans": list(Plan.objects.order_by("id").values()),
        "intervals": list(ActivationInterval.objects.order_by("id").values()),
    }


@contextmanager
def writes_nothing() -> Iterator[None]:
    before = _state()
    yield
    after = _state()
    assert after["counts"] == before["counts"]
    assert after == before


def _refused(exc_type: type[Exception], *needles: str, status: int | None = None) -> Any:
    """pytest.raises that also checks the message names the problem."""

    class _Check:
        def __enter__(self) -> Any:
            self._raises = pytest.raises(exc_type)
            self._info = self._raises.__enter__()
            return self._info

        def __exit__(self, *exc: Any) -> bool:
            handled = self._raises.__exit__(*exc)
            message = str(self._info.value).lower()
            for needle in needles:
                assert needle.lower() in message, f"{needle!r} not in {message!r}"
            if status is not None:
                assert getattr(self._info.value, "status_code", None) == status
            return bool(handled)

    return _Check()


@pytest.fixture
def billing_office() -> Office:
    """An active office with one active patient and a draft that a run has not yet
    finalized (its cycle ended on 04-10): every refusal below happens after that boundary,
    so a refused action must also roll back the catch-up it started."""
    PlanFactory(code="basic", per_patient_cents=450, minimum_cents=1000)
    office = OfficeFactory(timezone="America/Chicago", name="Riverbend Clinic")
    patient = PatientFactory(office=office)
    with at(local(2026, 3, 1, 9)):
        patient_activate(patient=patient)
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="basic")
    return Office.objects.get(pk=office.pk)


LATE = local(2026, 4, 12, 9)  # after the 04-10 boundary, before any run


def test_it_refuses_to_activate_an_active_patient(billing_office: Office) -> None:
    patient = billing_office.patients.get()
    with at(LATE), writes_nothing(), _refused(ConflictError, "already active", patient.billing_ref, status=409):
        patient_activate(patient=patient)


def test_it_refuses_to_deactivate_an_inactive_patient(billing_office: Office) -> None:
    patient = PatientFactory(office=billing_office)
    with at(LATE), writes_nothing(), _refused(ConflictError, "not active", patient.billing_ref, status=409):
        patient_deactivate(patient=patient)


def test_it_refuses_to_activate_a_patient_of_another_office(billing_office: Office) -> None:
    other = OfficeFactory(name="Hilltop Clinic")
    patient = PatientFactory(office=billing_office)
    with at(LATE), writes_nothing(), _refused(NotFoundError, "not a patient of", "Hilltop Clinic", status=404):
        patient_activate(patient=patient, office=other)


def test_it_refuses_to_deactivate_a_patient_of_another_office(billing_office: Office) -> None:
    other = OfficeFactory(name="Hilltop Clinic")
    patient = billing_office.patients.get()
    with at(LATE), writes_nothing(), _refused(NotFoundError, "not a patient of", status=404):
        patient_deactivate(patient=patient, office=other)


def test_it_refuses_to_subscribe_to_an_unknown_plan() -> None:
    office = OfficeFactory()
    with at(LATE), writes_nothing(), _refused(ApplicationError, "unknown plan", "no-such-plan", status=400):
        subscription_create(office=office, plan_code="no-such-plan")


def test_it_refuses_to_subscribe_to_an_inactive_plan() -> None:
    PlanFactory(code="legacy", is_active=False)
    office = OfficeFactory()
    with at(LATE), writes_nothing(), _refused(ApplicationError, "legacy", "not offered", status=400):
        subscription_create(office=office, plan_code="legacy")
    assert Plan.objects.get(code="legacy").locked is False


def test_it_refuses_an_unknown_time_zone_for_a_new_office() -> None:
    with writes_nothing(), _refused(ApplicationError, "unknown time zone", "Mars/Olympus_Mons", status=400):
        office_create(name="Crater Clinic", billing_email="billing@crater.example", timezone="Mars/Olympus_Mons")


def test_it_refuses_an_unknown_time_zone_for_an_existing_office() -> None:
    office = OfficeFactory(timezone="America/Chicago")
    with writes_nothing(), _refused(ApplicationError, "unknown time zone", "America/Springfield", status=400):
        office_update(office=office, timezone="America/Springfield")


@pytest.mark.parametrize(
    ("lines", "needles"),
    [
        ([{"description": "Refund of overcharge", "amount_cents": -5000}], ("negative", "-5000")),
        ([{"description": "Goodwill", "amount_cents": 0}], ("total above zero",)),
        ([{"description": "Training", "amount_cents": 0, "quantity": 3}], ("total above zero",)),
        ([{"description": "Training", "amount_cents": 12.5}], ("integer",)),
        ([{"description": "Training", "amount_cents": "1200"}], ("integer",)),
        ([{"description": "Training", "amount_cents": Decimal("1200")}], ("integer",)),
        ([{"description": "Training", "amount_cents": True}], ("integer",)),
        (
            [{"description": "Training", "amount_cents": 1000}, {"description": "Travel", "amount_cents": 99.99}],
            ("line 2", "integer"),
        ),
    ],
    ids=["negative", "zero", "zero-times-qty", "float", "string", "decimal", "bool", "second-line-float"],
)
def test_it_refuses_a_bad_one_off_invoice(
    billing_office: Office, lines: list[dict[str, Any]], needles: tuple[str, ...]
) -> None:
    with at(LATE), writes_nothing(), _refused(ApplicationError, *needles, status=400):
        invoice_create_one_off(office=billing_office, lines=lines)


@pytest.mark.parametrize(
    ("as_of", "needle"),
    [
        ("2026-04-13T09:00:00+00:00", "in the future"),
        ("2026-04-12T09:00:00", "no utc offset"),
        ("next tuesday", "iso 8601"),
    ],
)
def test_it_refuses_a_run_as_of_the_future_or_without_offset(billing_office: Office, as_of: str, needle: str) -> None:
    with at(datetime(2026, 4, 12, 15, tzinfo=ZoneInfo("UTC"))), writes_nothing(), _refused(CommandError, needle):
        call_command("run_billing_cycle", as_of=as_of, no_progress=True)


def test_it_refuses_a_plan_change_on_a_canceled_office(billing_office: Office) -> None:
    PlanFactory(code="premium", per_patient_cents=600)
    with at(local(2026, 3, 20, 9)):
        subscription_cancel(office=billing_office, immediately=True)
    with at(LATE), writes_nothing(), _refused(ConflictError, "canceled", status=409):
        subscription_change_plan(office=billing_office, plan_code="premium")


def test_it_refuses_a_plan_change_to_another_currency(billing_office: Office) -> None:
    PlanFactory(code="euro", currency="eur", per_patient_cents=400)
    with at(LATE), writes_nothing(), _refused(ApplicationError, "currency", "EUR", "USD", status=400):
        subscription_change_plan(office=billing_office, plan_code="euro")
    assert Office.objects.get(pk=billing_office.pk).pending_plan is None


@pytest.mark.parametrize(
    "change",
    [
        {"per_patient_cents": 500},
        {"minimum_cents": 0},
        {"setup_fee_cents": 1},
        {"currency": "eur"},
        {"trial_days": 30},
        {"name": "Basic 2027", "per_patient_cents": 500},
    ],
    ids=["price", "minimum", "setup-fee", "currency", "trial", "name-and-price"],
)
def test_it_refuses_to_change_a_locked_plans_prices(billing_office: Office, change: dict[str, Any]) -> None:
    plan = Plan.objects.get(code="basic")
    assert plan.locked
    frozen = next(k for k in change if k != "name")
    with writes_nothing(), _refused(ConflictError, "basic", frozen, status=409):
        plan_update(plan=plan, **change)


def test_it_still_lets_a_locked_plan_change_name_and_availability(billing_office: Office) -> None:
    plan = Plan.objects.get(code="basic")
    plan_update(plan=plan, name="Basic (2026 prices)", is_active=False)
    plan.refresh_from_db()
    assert (plan.name, plan.is_active, plan.per_patient_cents, plan.locked) == ("Basic (2026 prices)", False, 450, True)


def test_it_refuses_to_change_the_time_zone_while_subscribed(billing_office: Office) -> None:
    with at(LATE), writes_nothing(), _refused(ConflictError, "time zone", "canceled", status=409):
        office_update(office=billing_office, timezone="America/New_York")


def test_it_refuses_to_change_the_time_zone_while_trialing() -> None:
    PlanFactory(code="trial14", trial_days=14)
    office = OfficeFactory(timezone="America/Chicago")
    with at(local(2026, 3, 3, 15)):
        subscription_create(office=office, plan_code="trial14")
    with at(local(2026, 3, 5, 9)), writes_nothing(), _refused(ConflictError, "time zone", status=409):
        office_update(office=office, timezone="Europe/Paris")


def test_it_lets_the_time_zone_change_after_cancellation(billing_office: Office) -> None:
    with at(local(2026, 3, 20, 9)):
        subscription_cancel(office=billing_office, immediately=True)
        office = office_update(office=billing_office, timezone="America/New_York")
    assert office.timezone == "America/New_York"
