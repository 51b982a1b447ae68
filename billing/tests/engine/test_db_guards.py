"""The database itself, not the ORM, keeps history and finalized money frozen (spec §3,
§5, §6; house style 5 and 6).

Every refusal is provoked below the services: raw SQL through `connection.cursor()`,
`QuerySet.update()` and plain `save()`. Each expected failure runs in its own
`transaction.atomic()` so the test goes on afterwards. Triggers raise
`integrity_constraint_violation` on PostgreSQL and `RAISE(ABORT)` (SQLITE_CONSTRAINT) on
SQLite: both reach Django as `IntegrityError`, like the check and unique constraints, so
that is what is expected everywhere. DELETE guards exist on PostgreSQL only (Django's
test flush deletes rows on SQLite)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import IntegrityError, connection, transaction

from billing.engine.run import billing_run
from billing.models import (
    FROZEN_PLAN_FIELDS,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
    PlanChange,
    PlanChangeKind,
    PushState,
)
from billing.services import invoice_create_one_off, patient_activate, patient_deactivate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, professional_plan
from offices.models import Office
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db
CHI = ZoneInfo("America/Chicago")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


@contextlib.contextmanager
def refused(match: str | None = None) -> Iterator[None]:
    """The statement inside must be refused by the database; the savepoint is rolled back."""
    with pytest.raises(IntegrityError, match=match), transaction.atomic():
        yield


def sql(statement: str, params: list[Any] | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.rowcount


def db_dt(value: datetime) -> Any:
    """A datetime as the backend stores it (aware on PostgreSQL, naive UTC text on SQLite)."""
    return connection.ops.adapt_datetimefield_value(value)


@dataclass
class Billed:
    """An office one run past its first boundary (worked example 1 of the spec, shortened)."""

    office: Office
    other_office: Office
    plan: Plan
    finalized: Invoice  # the first cycle, `open`
    draft: Invoice  # the second cycle, still accruing
    setup_fee: Invoice  # one-off, finalized at subscription
    a: Patient
    b: Patient
    c: Patient  # never activated


@pytest.fixture
def billed() -> Billed:
    plan = professional_plan()
    office = OfficeFactory(timezone="America/Chicago")
    other = OfficeFactory(timezone="America/Chicago")
    a, b, c = (PatientFactory(office=office) for _ in range(3))
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code=plan.code)
    with at(local(2026, 3, 12, 9)):
        patient_activate(patient=a)
    with at(local(2026, 3, 13, 9)):
        patient_activate(patient=b)
    with at(local(2026, 3, 20, 9)):
        patient_deactivate(patient=b)
    with at(local(2026, 4, 10, 0, 5)):
        billing_run()
    finalized = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.OPEN)
    draft = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)
    setup_fee = Invoice.objects.get(office=office, is_setup_fee=True)
    assert finalized.number and finalized.lines.count() == 3  # a, b and the minimum adjustment
    assert draft.lines.count() == 1  # a, recurring
    assert setup_fee.status == InvoiceStatus.OPEN and setup_fee.number
    return Billed(
        office=office,
        other_office=other,
        plan=plan,
        finalized=finalized,
        draft=draft,
        setup_fee=setup_fee,
        a=a,
        b=b,
        c=c,
    )


def snapshot(invoice: Invoice) -> dict[str, Any]:
    fresh = Invoice.objects.get(pk=invoice.pk)
    content = {f: getattr(fresh, f) for f in ("office_id", "kind", "number", "currency", "subtotal_cents")}
    content.update({f: getattr(fresh, f) for f in ("total_cents", "period_start", "period_end", "is_setup_fee")})
    content.update({f: getattr(fresh, f) for f in ("plan_id", "finalized_at", "status")})
    content["lines"] = list(
        LineItem.objects.filter(invoice=fresh)
        .order_by("id")
        .values_list("id", "kind", "patient_id", "description", "quantity", "unit_amount_cents", "amount_cents")
    )
    return content


# --- Finalized invoices ------------------------------------------------------------------


FROZEN_INVOICE_SQL = {
    "total_cents": ("total_cents = total_cents + 1", lambda b: []),
    "subtotal_cents": ("subtotal_cents = 0", lambda b: []),
    "number": ("number = %s", lambda b: ["INV-2099-999999"]),
    "number_null": ("number = NULL", lambda b: []),
    "period_start": ("period_start = %s", lambda b: [db_dt(b.finalized.period_start - timedelta(days=1))]),
    "period_end": ("period_end = %s", lambda b: [db_dt(b.finalized.period_end + timedelta(days=1))]),
    "office": ("office_id = %s", lambda b: [b.other_office.pk]),
    "currency": ("currency = 'eur'", lambda b: []),
    "kind": ("kind = 'one_off'", lambda b: []),
    "plan": ("plan_id = NULL", lambda b: []),
    "finalized_at": ("finalized_at = %s", lambda b: [db_dt(b.finalized.finalized_at + timedelta(hours=1))]),
    "is_setup_fee": ("is_setup_fee = %s", lambda b: [True]),
}


@pytest.mark.parametrize("column", sorted(FROZEN_INVOICE_SQL))
def test_it_refuses_a_raw_sql_update_of_a_finalized_invoices_content(billed: Billed, column: str) -> None:
    assignment, params = FROZEN_INVOICE_SQL[column]
    before = snapshot(billed.finalized)
    with refused():
        sql(
            f"UPDATE billing_invoice SET {assignment} WHERE id = %s",
            [*params(billed), billed.finalized.pk],
        )
    assert snapshot(billed.finalized) == before


FROZEN_INVOICE_ORM = {
    "total_cents": lambda b: {"total_cents": b.finalized.total_cents + 100},
    "subtotal_cents": lambda b: {"subtotal_cents": 1},
    "number": lambda b: {"number": "INV-2099-000001"},
    "period_start": lambda b: {"period_start": b.finalized.period_start + timedelta(days=1)},
    "period_end": lambda b: {"period_end": b.finalized.period_end - timedelta(days=1)},
    "office": lambda b: {"office": b.other_office},
    "currency": lambda b: {"currency": "eur"},
    "plan": lambda b: {"plan": PlanFactory()},
}


@pytest.mark.parametrize("field", sorted(FROZEN_INVOICE_ORM))
def test_it_refuses_a_queryset_update_of_a_finalized_invoices_content(billed: Billed, field: str) -> None:
    changes = FROZEN_INVOICE_ORM[field](billed)
    before = snapshot(billed.finalized)
    with refused():
        Invoice.objects.filter(pk=billed.finalized.pk).update(**changes)
    assert snapshot(billed.finalized) == before


def test_it_refuses_saving_a_finalized_invoice_with_a_new_total_through_the_orm(billed: Billed) -> None:
    before = snapshot(billed.finalized)
    invoice = Invoice.objects.get(pk=billed.finalized.pk)
    invoice.total_cents = invoice.subtotal_cents = 1
    with refused():
        invoice.save()
    assert snapshot(billed.finalized) == before


def test_it_refuses_the_content_of_a_finalized_one_off_invoice_too(billed: Billed) -> None:
    before = snapshot(billed.setup_fee)
    with refused():
        Invoice.objects.filter(pk=billed.setup_fee.pk).update(total_cents=1, subtotal_cents=1)
    with refused():
        Invoice.objects.filter(pk=billed.setup_fee.pk).update(is_setup_fee=False)
    assert snapshot(billed.setup_fee) == before


@pytest.mark.parametrize("status", [InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.VOID])
def test_it_refuses_turning_a_finalized_invoice_back_into_a_draft(billed: Billed, status: str) -> None:
    Invoice.objects.filter(pk=billed.finalized.pk).update(status=status)
    before = snapshot(billed.finalized)
    with refused():  # the whole way back, so that no check constraint is what stops it
        Invoice.objects.filter(pk=billed.finalized.pk).update(
            status=InvoiceStatus.DRAFT, number=None, finalized_at=None
        )
    with refused():
        Invoice.objects.filter(pk=billed.finalized.pk).update(status=InvoiceStatus.DRAFT)
    with refused():
        sql("UPDATE billing_invoice SET status = 'draft' WHERE id = %s", [billed.finalized.pk])
    assert snapshot(billed.finalized) == before


def test_it_lets_a_finalized_invoices_life_move_on(billed: Billed) -> None:
    """Status, payment timestamps, the Stripe references and the push state still change."""
    paid_at = local(2026, 4, 12, 10)
    updated = Invoice.objects.filter(pk=billed.finalized.pk).update(
        status=InvoiceStatus.PAID,
        paid_at=paid_at,
        stripe_invoice_id="in_test_123",
        push_state=PushState.PUSHED,
        push_attempts=2,
        push_error="",
        payment_note="cheque 1042",
    )
    assert updated == 1
    invoice = Invoice.objects.get(pk=billed.finalized.pk)
    assert (invoice.status, invoice.paid_at, invoice.stripe_invoice_id) == ("paid", paid_at, "in_test_123")
    assert (invoice.push_state, invoice.push_attempts, invoice.payment_note) == ("pushed", 2, "cheque 1042")

    assert sql("UPDATE billing_invoice SET status = 'void', push_state = 'failed' WHERE id = %s", [invoice.pk]) == 1
    invoice.refresh_from_db()
    assert (invoice.status, invoice.push_state) == ("void", "failed")

    invoice.status = InvoiceStatus.UNCOLLECTIBLE
    invoice.marked_uncollectible_at = local(2026, 5, 1)
    invoice.past_due_at = local(2026, 4, 20)
    invoice.save()  # a full save rewrites the frozen columns with their own values: allowed
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.UNCOLLECTIBLE
    assert invoice.number == billed.finalized.number and invoice.total_cents == billed.finalized.total_cents


def test_it_still_lets_a_draft_change_its_content(billed: Billed) -> None:
    assert Invoice.objects.filter(pk=billed.draft.pk).update(total_cents=12345, subtotal_cents=12345) == 1
    assert sql("UPDATE billing_invoice SET currency = 'eur' WHERE id = %s", [billed.draft.pk]) == 1


def test_it_refuses_deleting_a_finalized_invoice(on_postgres: None, billed: Billed) -> None:
    before = snapshot(billed.finalized)
    with refused("never deleted"):
        sql("DELETE FROM billing_invoice WHERE id = %s", [billed.finalized.pk])
    with refused("never deleted"):
        sql("DELETE FROM billing_invoice WHERE id = %s", [billed.setup_fee.pk])
    assert snapshot(billed.finalized) == before
    assert Invoice.objects.filter(pk=billed.setup_fee.pk).exists()


# --- Lines of finalized invoices -----------------------------------------------------------


def test_it_refuses_inserting_a_line_into_a_finalized_invoice(billed: Billed) -> None:
    before = snapshot(billed.finalized)
    with refused("frozen"):
        LineItem.objects.create(
            invoice=billed.finalized,
            kind=LineKind.MANUAL,
            description="Late fee",
            quantity=1,
            unit_amount_cents=100,
            amount_cents=100,
        )
    with refused("frozen"):
        LineItem.objects.bulk_create(
            [
                LineItem(
                    invoice=billed.setup_fee,
                    kind=LineKind.MANUAL,
                    description="Late fee",
                    quantity=1,
                    unit_amount_cents=100,
                    amount_cents=100,
                )
            ]
        )
    with refused("frozen"):
        sql(
            "INSERT INTO billing_lineitem (invoice_id, kind, patient_id, patient_ref, description, quantity,"
            " unit_amount_cents, amount_cents, created_at) VALUES (%s, 'activation', %s, %s, 'x', 1, 450, 450, %s)",
            [billed.finalized.pk, billed.c.pk, billed.c.billing_ref, db_dt(local(2026, 4, 11))],
        )
    assert snapshot(billed.finalized) == before


LINE_CHANGES = {
    "amount": "amount_cents = 0, unit_amount_cents = 0",
    "quantity": "quantity = 2, amount_cents = 2 * unit_amount_cents",
    "description": "description = 'edited'",
    "kind": "kind = CASE WHEN kind = 'activation' THEN 'recurring' ELSE 'activation' END",
    "patient_ref": "patient_ref = 'PT-00000000'",
}


@pytest.mark.parametrize("change", sorted(LINE_CHANGES))
def test_it_refuses_a_raw_sql_update_of_a_finalized_invoices_line(billed: Billed, change: str) -> None:
    line = billed.finalized.lines.filter(patient__isnull=False).first()
    assert line is not None
    before = snapshot(billed.finalized)
    with refused("frozen"):
        sql(f"UPDATE billing_lineitem SET {LINE_CHANGES[change]} WHERE id = %s", [line.pk])
    assert snapshot(billed.finalized) == before


def test_it_refuses_orm_updates_of_a_finalized_invoices_lines(billed: Billed) -> None:
    before = snapshot(billed.finalized)
    with refused("frozen"):
        LineItem.objects.filter(invoice=billed.finalized).update(description="edited")
    adjustment = LineItem.objects.get(invoice=billed.finalized, kind=LineKind.MINIMUM_ADJUSTMENT)
    adjustment.unit_amount_cents = adjustment.amount_cents = 1
    with refused("frozen"):
        adjustment.save()
    assert snapshot(billed.finalized) == before


def test_it_refuses_moving_a_line_into_or_out_of_a_finalized_invoice(billed: Billed) -> None:
    finalized_line = billed.finalized.lines.get(patient=billed.b)
    draft_line = billed.draft.lines.get(patient=billed.a)
    before, before_draft = snapshot(billed.finalized), snapshot(billed.draft)
    with refused("frozen"):  # out of the finalized invoice, into the draft
        LineItem.objects.filter(pk=finalized_line.pk).update(invoice=billed.draft)
    with refused("frozen"):  # out of the draft, into the finalized invoice
        LineItem.objects.filter(pk=draft_line.pk).update(invoice=billed.setup_fee)
    assert snapshot(billed.finalized) == before and snapshot(billed.draft) == before_draft


def test_it_still_lets_a_drafts_lines_change(billed: Billed) -> None:
    line = billed.draft.lines.get(patient=billed.a)
    assert LineItem.objects.filter(pk=line.pk).update(description="Active patient (edited)") == 1
    LineItem.objects.create(
        invoice=billed.draft,
        kind=LineKind.MANUAL,
        description="Correction",
        quantity=1,
        unit_amount_cents=10,
        amount_cents=10,
    )
    assert billed.draft.lines.count() == 2


def test_it_refuses_deleting_a_finalized_invoices_lines(on_postgres: None, billed: Billed) -> None:
    before = snapshot(billed.finalized)
    with refused("frozen"):
        LineItem.objects.filter(invoice=billed.finalized).delete()
    with refused("frozen"):
        sql("DELETE FROM billing_lineitem WHERE invoice_id = %s", [billed.setup_fee.pk])
    with refused("frozen"):
        LineItem.objects.get(invoice=billed.finalized, kind=LineKind.MINIMUM_ADJUSTMENT).delete()
    assert snapshot(billed.finalized) == before
    assert billed.setup_fee.lines.count() == 1
    # A draft's lines may go (finalization reconciles them with the history).
    assert LineItem.objects.filter(invoice=billed.draft).delete()[0] == 1


# --- Plans -------------------------------------------------------------------------------


LOCKED_PLAN_CHANGES = {
    "per_patient_cents": {"per_patient_cents": 999},
    "minimum_cents": {"minimum_cents": 0},
    "setup_fee_cents": {"setup_fee_cents": 1},
    "currency": {"currency": "eur"},
    "trial_days": {"trial_days": 30},
    "code": {"code": "renamed-code"},
    "unlock": {"locked": False},
}


@pytest.mark.parametrize("change", sorted(LOCKED_PLAN_CHANGES))
def test_it_refuses_changing_a_locked_plans_prices_currency_or_trial(billed: Billed, change: str) -> None:
    def frozen_content() -> tuple[Any, ...]:
        return tuple(Plan.objects.filter(pk=billed.plan.pk).values_list(*FROZEN_PLAN_FIELDS, "locked").get())

    before = frozen_content()
    assert before[-1] is True  # locked by the subscription
    with refused("in use"):
        Plan.objects.filter(pk=billed.plan.pk).update(**LOCKED_PLAN_CHANGES[change])
    assert frozen_content() == before


def test_it_refuses_a_raw_sql_price_change_of_a_locked_plan(billed: Billed) -> None:
    with refused("in use"):
        sql("UPDATE billing_plan SET per_patient_cents = per_patient_cents + 1 WHERE id = %s", [billed.plan.pk])
    plan = Plan.objects.get(pk=billed.plan.pk)
    plan.trial_days = 7
    with refused("in use"):
        plan.save()
    assert Plan.objects.get(pk=billed.plan.pk).per_patient_cents == 450


def test_it_lets_a_locked_plan_change_its_name_and_availability(billed: Billed) -> None:
    assert Plan.objects.filter(pk=billed.plan.pk).update(name="Professional (2026)", is_active=False) == 1
    assert sql("UPDATE billing_plan SET is_active = %s WHERE id = %s", [True, billed.plan.pk]) == 1
    plan = Plan.objects.get(pk=billed.plan.pk)
    assert (plan.name, plan.is_active, plan.per_patient_cents) == ("Professional (2026)", True, 450)


def test_it_lets_an_unused_plan_change_its_prices() -> None:
    plan = PlanFactory(per_patient_cents=100)
    assert not plan.locked
    assert Plan.objects.filter(pk=plan.pk).update(per_patient_cents=200, currency="eur", trial_days=14) == 1


# --- Plan changes ------------------------------------------------------------------------


def test_it_refuses_any_update_of_a_plan_change(billed: Billed) -> None:
    change = PlanChange.objects.get(office=billed.office)
    other_plan = PlanFactory()
    with refused("append-only"):
        PlanChange.objects.filter(pk=change.pk).update(requested_at=change.requested_at - timedelta(days=40))
    with refused("append-only"):
        PlanChange.objects.filter(pk=change.pk).update(plan=other_plan)
    with refused("append-only"):
        sql("UPDATE billing_planchange SET kind = %s WHERE id = %s", [PlanChangeKind.CHANGE, change.pk])
    with refused("append-only"):
        change.save()  # even an identical rewrite: plan changes are never written twice
    fresh = PlanChange.objects.get(pk=change.pk)
    assert (fresh.plan_id, fresh.kind, fresh.requested_at) == (billed.plan.pk, "subscribe", change.requested_at)


def test_it_refuses_deleting_a_plan_change(on_postgres: None, billed: Billed) -> None:
    change = PlanChange.objects.get(office=billed.office)
    with refused("append-only"):
        PlanChange.objects.filter(pk=change.pk).delete()
    with refused("append-only"):
        sql("DELETE FROM billing_planchange WHERE id = %s", [change.pk])
    assert PlanChange.objects.filter(pk=change.pk).exists()


# --- Activation history ------------------------------------------------------------------


def test_it_lets_an_open_interval_be_closed_once(billed: Billed) -> None:
    interval = ActivationInterval.objects.get(patient=billed.a)
    assert interval.deactivated_at is None
    closed_at = local(2026, 4, 15, 8)
    assert ActivationInterval.objects.filter(pk=interval.pk).update(deactivated_at=closed_at) == 1
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(deactivated_at=closed_at + timedelta(hours=1))
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(deactivated_at=None)
    assert ActivationInterval.objects.get(pk=interval.pk).deactivated_at == closed_at


def test_it_refuses_reopening_or_rewriting_a_closed_interval(billed: Billed) -> None:
    interval = ActivationInterval.objects.get(patient=billed.b)
    assert interval.deactivated_at == local(2026, 3, 20, 9)
    original = (interval.activated_at, interval.deactivated_at)
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(deactivated_at=None)
    with refused("append-only"):
        sql("UPDATE patients_activationinterval SET deactivated_at = NULL WHERE id = %s", [interval.pk])
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(deactivated_at=local(2026, 4, 20))
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(activated_at=local(2026, 3, 14))
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(patient=billed.c)
    fresh = ActivationInterval.objects.get(pk=interval.pk)
    assert (fresh.activated_at, fresh.deactivated_at, fresh.patient_id) == (*original, billed.b.pk)


def test_it_refuses_moving_an_open_intervals_start_or_owner(billed: Billed) -> None:
    interval = ActivationInterval.objects.get(patient=billed.a)
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(activated_at=local(2026, 4, 12))
    with refused("append-only"):
        sql(
            "UPDATE patients_activationinterval SET activated_at = %s WHERE id = %s",
            [db_dt(local(2026, 2, 1)), interval.pk],
        )
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(patient=billed.c)
    with refused("append-only"):
        ActivationInterval.objects.filter(pk=interval.pk).update(office=billed.other_office)
    with refused("append-only"):  # closing it and moving its start in one statement
        ActivationInterval.objects.filter(pk=interval.pk).update(
            activated_at=local(2026, 3, 1), deactivated_at=local(2026, 3, 2)
        )
    fresh = ActivationInterval.objects.get(pk=interval.pk)
    assert (fresh.activated_at, fresh.deactivated_at) == (local(2026, 3, 12, 9), None)


def test_it_refuses_deleting_activation_history(on_postgres: None, billed: Billed) -> None:
    with refused("append-only"):
        ActivationInterval.objects.filter(patient=billed.b).delete()
    with refused("append-only"):
        sql("DELETE FROM patients_activationinterval WHERE patient_id = %s", [billed.a.pk])
    assert ActivationInterval.objects.filter(office=billed.office).count() == 2


# --- Check and unique constraints --------------------------------------------------------


def test_it_refuses_negative_amounts(billed: Billed) -> None:
    with refused():
        Invoice.objects.filter(pk=billed.draft.pk).update(total_cents=-1)
    with refused():
        Invoice.objects.filter(pk=billed.draft.pk).update(subtotal_cents=-1)
    with refused():
        LineItem.objects.create(
            invoice=billed.draft,
            kind=LineKind.MANUAL,
            description="Refund",
            quantity=1,
            unit_amount_cents=-100,
            amount_cents=-100,
        )
    with refused():
        PlanFactory(per_patient_cents=-1)
    with refused():
        PlanFactory(minimum_cents=-1)
    with refused():
        PlanFactory(setup_fee_cents=-1)
    assert Invoice.objects.get(pk=billed.draft.pk).total_cents == 450


def test_it_refuses_a_line_whose_amount_is_not_quantity_times_unit(billed: Billed) -> None:
    with refused():
        LineItem.objects.create(
            invoice=billed.draft,
            kind=LineKind.MANUAL,
            description="Workshop",
            quantity=2,
            unit_amount_cents=100,
            amount_cents=100,
        )
    line = billed.draft.lines.get(patient=billed.a)
    with refused():
        LineItem.objects.filter(pk=line.pk).update(amount_cents=449)
    with refused():
        LineItem.objects.filter(pk=line.pk).update(quantity=0, amount_cents=0)
    assert LineItem.objects.get(pk=line.pk).amount_cents == 450


def test_it_refuses_patient_lines_without_a_patient_and_other_lines_with_one(billed: Billed) -> None:
    with refused():
        LineItem.objects.create(
            invoice=billed.draft, kind=LineKind.ACTIVATION, description="x", unit_amount_cents=1, amount_cents=1
        )
    with refused():
        LineItem.objects.create(
            invoice=billed.draft,
            kind=LineKind.MANUAL,
            patient=billed.c,
            description="x",
            unit_amount_cents=1,
            amount_cents=1,
        )


def test_it_refuses_a_second_cycle_invoice_for_one_office_and_period(billed: Billed) -> None:
    start, end = billed.finalized.period_start, billed.finalized.period_end
    with refused():  # a finalized twin (so the one-open-draft rule is not what stops it)
        Invoice.objects.create(
            office=billed.office,
            kind=InvoiceKind.CYCLE,
            status=InvoiceStatus.OPEN,
            number="INV-2099-000001",
            finalized_at=end,
            period_start=start,
            period_end=end,
        )
    with refused():  # the draft's twin, also open as a draft
        Invoice.objects.create(
            office=billed.office,
            kind=InvoiceKind.CYCLE,
            period_start=billed.draft.period_start,
            period_end=billed.draft.period_end,
        )
    assert Invoice.objects.filter(office=billed.office, kind=InvoiceKind.CYCLE).count() == 2
    # Another office may of course have a cycle starting at the same instant.
    Invoice.objects.create(office=billed.other_office, kind=InvoiceKind.CYCLE, period_start=start, period_end=end)


def test_it_refuses_two_open_drafts_for_one_office(billed: Billed) -> None:
    later = billed.draft.period_end
    with refused():
        Invoice.objects.create(
            office=billed.office, kind=InvoiceKind.CYCLE, period_start=later, period_end=later + timedelta(days=30)
        )
    assert Invoice.objects.filter(office=billed.office, status=InvoiceStatus.DRAFT).count() == 1


def test_it_refuses_a_second_setup_fee_invoice_for_one_office(billed: Billed) -> None:
    with refused():
        Invoice.objects.create(office=billed.office, kind=InvoiceKind.ONE_OFF, is_setup_fee=True)
    assert Invoice.objects.filter(office=billed.office, is_setup_fee=True).count() == 1
    Invoice.objects.create(office=billed.other_office, kind=InvoiceKind.ONE_OFF, is_setup_fee=True)


def test_it_refuses_two_lines_for_one_patient_on_one_invoice(billed: Billed) -> None:
    with refused():
        LineItem.objects.create(
            invoice=billed.draft,
            kind=LineKind.ACTIVATION,
            patient=billed.a,
            patient_ref=billed.a.billing_ref,
            description="Patient activated during the period",
            unit_amount_cents=450,
            amount_cents=450,
        )
    with refused():  # the set-based path the engine uses
        sql(
            "INSERT INTO billing_lineitem (invoice_id, kind, patient_id, patient_ref, description, quantity,"
            " unit_amount_cents, amount_cents, created_at) VALUES (%s, 'recurring', %s, %s, 'x', 1, 450, 450, %s)",
            [billed.draft.pk, billed.a.pk, billed.a.billing_ref, db_dt(local(2026, 4, 11))],
        )
    assert billed.draft.lines.filter(patient=billed.a).count() == 1


def test_it_refuses_a_number_without_finalization_and_a_finalized_invoice_without_a_number(billed: Billed) -> None:
    with refused():
        Invoice.objects.create(office=billed.other_office, kind=InvoiceKind.ONE_OFF, number="INV-2099-000002")
    with refused():
        Invoice.objects.create(
            office=billed.other_office,
            kind=InvoiceKind.ONE_OFF,
            status=InvoiceStatus.OPEN,
            finalized_at=local(2026, 4, 1),
        )


def test_it_refuses_a_second_open_interval_for_one_patient(billed: Billed) -> None:
    with refused():
        ActivationInterval.objects.create(patient=billed.a, office=billed.office, activated_at=local(2026, 4, 20))
    with refused():  # ending before it starts
        ActivationInterval.objects.create(
            patient=billed.c, office=billed.office, activated_at=local(2026, 4, 20), deactivated_at=local(2026, 4, 19)
        )


def test_it_refuses_reusing_an_invoice_number(billed: Billed) -> None:
    with refused():
        invoice_draft = Invoice.objects.create(office=billed.other_office, kind=InvoiceKind.ONE_OFF)
        LineItem.objects.create(
            invoice=invoice_draft, kind=LineKind.MANUAL, description="x", unit_amount_cents=1, amount_cents=1
        )
        Invoice.objects.filter(pk=invoice_draft.pk).update(
            status=InvoiceStatus.OPEN, number=billed.finalized.number, finalized_at=local(2026, 4, 11)
        )
    # The service path numbers the next one instead.
    with at(local(2026, 4, 11, 9)):
        one_off = invoice_create_one_off(
            office=billed.other_office, lines=[{"description": "Training", "amount_cents": 100}]
        )
    assert one_off.number not in {billed.finalized.number, billed.setup_fee.number}
