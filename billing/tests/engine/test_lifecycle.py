"""The subscription and invoice lifecycle against the spec (§4–§8, §11), through the real
services, the billing run and the database."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.forms.models import model_to_dict

from audit.models import AuditEvent
from billing.engine.run import billing_run
from billing.models import (
    BillingRun,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    LineItem,
    LineKind,
    PushState,
)
from billing.services import (
    invoice_create_one_off,
    invoice_void,
    patient_activate,
    patient_deactivate,
    subscription_cancel,
    subscription_change_plan,
    subscription_create,
    subscription_resume,
    subscription_view,
)
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, operator, professional_plan
from config.errors import ConflictError
from offices.models import Office, SubscriptionStatus
from patients.models import Patient
from patients.services import patient_create

pytestmark = pytest.mark.django_db

CHI = ZoneInfo("America/Chicago")
TOKYO = ZoneInfo("Asia/Tokyo")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


# --- small helpers: every call happens at a stated moment ------------------------------


def subscribe(office: Office, code: str, when: datetime, **kw: Any) -> Office:
    with at(when):
        return subscription_create(office=office, plan_code=code, **kw)


def activate(patient: Patient, when: datetime) -> None:
    with at(when):
        patient_activate(patient=patient)


def deactivate(patient: Patient, when: datetime) -> None:
    with at(when):
        patient_deactivate(patient=patient)


def change_plan(office: Office, code: str, when: datetime) -> Office:
    with at(when):
        return subscription_change_plan(office=office, plan_code=code)


def cancel(office: Office, when: datetime, **kw: Any) -> Office:
    with at(when):
        return subscription_cancel(office=office, **kw)


def run(when: datetime, **kw: Any) -> BillingRun:
    with at(when):
        return billing_run(**kw)


def reload(office: Office) -> Office:
    return Office.objects.get(pk=office.pk)


def cycles(office: Office) -> list[Invoice]:
    return list(Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE).order_by("period_start"))


def draft_of(office: Office) -> Invoice | None:
    return Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT).first()


def patient_lines(invoice: Invoice) -> dict[int, str]:
    """patient id → line kind, for the invoice's patient lines."""
    return {
        line.patient_id: line.kind
        for line in invoice.lines.filter(patient__isnull=False)
        if line.patient_id is not None
    }


def setup_fee_invoices(office: Office) -> list[Invoice]:
    return list(Invoice.objects.filter(office=office, kind=InvoiceKind.ONE_OFF, is_setup_fee=True))


def number_pattern(year: int) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(settings.INVOICE_NUMBER_PREFIX)}-{year}-\d{{6}}$")


# --- §11 worked examples 3 and 4 --------------------------------------------------------


@pytest.mark.parametrize(
    "run_at",
    [local(2026, 5, 10, 0, 5), local(2026, 5, 10, 0, 45), local(2026, 5, 12, 9)],
    ids=["run-between-activation-and-deactivation", "run-after-deactivation", "run-two-days-late"],
)
def test_it_bills_a_patient_active_across_the_boundary_in_both_cycles(run_at: datetime) -> None:
    """§11 example 3: active only 2026-05-09 23:30 → 2026-05-10 00:30 local, anchor 10."""
    PlanFactory(code="basic", per_patient_cents=450)
    office = OfficeFactory(timezone="America/Chicago")
    patient = PatientFactory(office=office)
    subscribe(office, "basic", local(2026, 4, 10, 9))
    assert reload(office).billing_cycle_anchor_date == date(2026, 4, 10)

    activate(patient, local(2026, 5, 9, 23, 30))
    if run_at < local(2026, 5, 10, 0, 30):
        run(run_at)
        deactivate(patient, local(2026, 5, 10, 0, 30))
    else:
        deactivate(patient, local(2026, 5, 10, 0, 30))
        run(run_at)
    run(local(2026, 6, 10, 1))

    april_may, may_june, june_july = cycles(office)
    assert april_may.period_end == may_june.period_start == local(2026, 5, 10)
    assert may_june.period_end == june_july.period_start == local(2026, 6, 10)
    assert patient_lines(april_may) == {patient.pk: LineKind.ACTIVATION}
    assert patient_lines(may_june) == {patient.pk: LineKind.RECURRING}
    assert patient_lines(june_july) == {}
    assert april_may.status == may_june.status == InvoiceStatus.OPEN
    assert april_may.total_cents == may_june.total_cents == 450


def _bill_a_quarter(*, run_delay: timedelta) -> tuple[Office, list[Patient]]:
    """One office's history from the spec's example 1 onwards, with a run `run_delay`
    after every boundary. The events are the same whatever the delay."""
    office = OfficeFactory(timezone="America/Chicago")
    p = [PatientFactory(office=office) for _ in range(6)]
    events: list[tuple[datetime, Callable[[], Any]]] = [
        (local(2026, 3, 1, 9), lambda: patient_activate(patient=p[0])),
        (local(2026, 3, 1, 9, 1), lambda: patient_activate(patient=p[1])),
        (local(2026, 3, 1, 9, 2), lambda: patient_activate(patient=p[2])),
        (local(2026, 3, 10, 14), lambda: subscription_create(office=office, plan_code="professional")),
        (local(2026, 3, 20, 10), lambda: patient_activate(patient=p[3])),
        (local(2026, 3, 25, 10), lambda: patient_deactivate(patient=p[0])),
        (local(2026, 3, 28, 10), lambda: patient_activate(patient=p[0])),
        # Deactivated just before a boundary: not billed in the next cycle.
        (local(2026, 4, 9, 18), lambda: patient_deactivate(patient=p[1])),
        # Deactivated after the boundary but before a late run: still recurring in Apr–May.
        (local(2026, 4, 11, 8), lambda: patient_deactivate(patient=p[2])),
        # A plan change requested before the May boundary prices May–June.
        (local(2026, 4, 25, 12), lambda: subscription_change_plan(office=office, plan_code="premium")),
        (local(2026, 5, 9, 23, 30), lambda: patient_activate(patient=p[4])),
        (local(2026, 5, 10, 0, 30), lambda: patient_deactivate(patient=p[4])),
        (local(2026, 5, 11, 7), lambda: patient_deactivate(patient=p[3])),
        (local(2026, 6, 1, 10), lambda: patient_activate(patient=p[5])),
    ]
    for boundary in (local(2026, 4, 10), local(2026, 5, 10), local(2026, 6, 10)):
        events.append((boundary + run_delay, lambda: billing_run(office_ids=[office.pk])))
    for when, action in sorted(events, key=lambda e: e[0]):
        with at(when):
            action()
    return office, p


def _invoice_content(office: Office, patients: list[Patient]) -> list[tuple[Any, ...]]:
    """Everything about the office's invoices except numbers and finalization times."""
    index = {p.pk: i for i, p in enumerate(patients)}
    content = []
    for inv in Invoice.objects.filter(office=office).order_by("kind", "period_start", "id"):
        lines = sorted(
            (
                line.kind,
                index.get(line.patient_id, -1) if line.patient_id else -1,
                line.description.replace(line.patient_ref, "<ref>") if line.patient_ref else line.description,
                line.quantity,
                line.unit_amount_cents,
                line.amount_cents,
            )
            for line in inv.lines.all()
        )
        content.append(
            (
                inv.kind,
                inv.status,
                inv.is_setup_fee,
                inv.period_start,
                inv.period_end,
                inv.plan_id,
                inv.currency,
                inv.subtotal_cents,
                inv.total_cents,
                inv.push_state,
                inv.number is not None,
                tuple(lines),
            )
        )
    return content


def test_it_gives_the_same_invoices_whether_the_run_is_punctual_or_two_days_late() -> None:
    """§11 example 4 (numbers are the one thing allowed to differ)."""
    professional_plan()
    professional_plan(code="premium", name="Premium", per_patient_cents=600)
    punctual, p_patients = _bill_a_quarter(run_delay=timedelta(minutes=5))
    late, l_patients = _bill_a_quarter(run_delay=timedelta(days=2))

    expected = _invoice_content(punctual, p_patients)
    assert _invoice_content(late, l_patients) == expected
    # Sanity: the history is the one the spec describes, not an empty one.
    cyc = cycles(punctual)
    assert [c.period_start for c in cyc] == [
        local(2026, 3, 10, 14),
        local(2026, 4, 10),
        local(2026, 5, 10),
        local(2026, 6, 10),
    ]
    assert patient_lines(cyc[1]) == {
        p_patients[0].pk: LineKind.RECURRING,
        p_patients[2].pk: LineKind.RECURRING,
        p_patients[3].pk: LineKind.RECURRING,
        p_patients[4].pk: LineKind.ACTIVATION,
    }
    assert {line.unit_amount_cents for line in cyc[1].lines.filter(patient__isnull=False)} == {450}
    assert {line.unit_amount_cents for line in cyc[2].lines.filter(patient__isnull=False)} == {600}
    assert set(patient_lines(cyc[2])) == {p_patients[0].pk, p_patients[3].pk, p_patients[4].pk, p_patients[5].pk}
    assert reload(punctual).subscription_status == reload(late).subscription_status == SubscriptionStatus.ACTIVE


def test_it_changes_nothing_when_run_a_second_time() -> None:
    professional_plan()
    office = OfficeFactory()
    patients = [PatientFactory(office=office) for _ in range(3)]
    for p in patients:
        activate(p, local(2026, 3, 1, 9))
    subscribe(office, "professional", local(2026, 3, 10, 14))
    first = run(local(2026, 5, 10, 1))
    assert first.invoices_finalized == 2 and first.invoices_opened == 2

    def state() -> tuple[Any, ...]:
        return (
            list(Invoice.objects.order_by("id").values()),
            list(LineItem.objects.order_by("id").values()),
            list(Office.objects.filter(pk=office.pk).values()),
        )

    before = state()
    second = run(local(2026, 5, 10, 1, 30))
    assert (second.offices_due, second.invoices_finalized, second.invoices_opened, second.lines_created) == (0, 0, 0, 0)
    assert second.amount_finalized_cents == 0
    assert state() == before


def test_it_catches_up_every_missed_cycle_in_order() -> None:
    professional_plan(setup_fee_cents=0)
    office = OfficeFactory()
    stays, leaves = PatientFactory(office=office), PatientFactory(office=office)
    activate(stays, local(2026, 1, 2, 9))
    activate(leaves, local(2026, 1, 2, 9))
    subscribe(office, "professional", local(2026, 1, 10, 8))
    deactivate(leaves, local(2026, 2, 20, 12))

    result = run(local(2026, 5, 10, 3))

    assert (result.invoices_finalized, result.invoices_opened) == (4, 4)
    cyc = cycles(office)
    assert [c.period_start for c in cyc] == [
        local(2026, 1, 10, 8),
        local(2026, 2, 10),
        local(2026, 3, 10),
        local(2026, 4, 10),
        local(2026, 5, 10),
    ]
    assert [c.status for c in cyc] == [InvoiceStatus.OPEN] * 4 + [InvoiceStatus.DRAFT]
    for earlier, later in itertools.pairwise(cyc):
        assert earlier.period_end == later.period_start
    # Finalized in cycle order, so numbered in cycle order.
    numbers = [c.number for c in cyc[:4]]
    assert all(n and number_pattern(2026).match(n) for n in numbers)
    assert numbers == sorted(numbers)
    assert set(patient_lines(cyc[0])) == {stays.pk, leaves.pk}
    assert set(patient_lines(cyc[1])) == {stays.pk, leaves.pk}  # active at some instant of Feb–Mar
    assert set(patient_lines(cyc[2])) == {stays.pk}
    assert set(patient_lines(cyc[4])) == {stays.pk}
    assert all(c.total_cents == 15000 for c in cyc[:4])  # the minimum, every cycle


# --- Trials (§4, §7) ----------------------------------------------------------------------


def test_it_bills_nothing_during_a_trial_and_opens_the_first_cycle_at_trial_end() -> None:
    PlanFactory(code="trial14", trial_days=14, per_patient_cents=450, setup_fee_cents=50000)
    office = OfficeFactory(timezone="America/Chicago")
    before, during = PatientFactory(office=office), PatientFactory(office=office)
    activate(before, local(2026, 3, 1, 9))
    subscribe(office, "trial14", local(2026, 3, 3, 15))

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.TRIALING
    assert office.trial_ends_at == local(2026, 3, 17)
    assert office.billing_cycle_anchor_date == date(2026, 3, 17)
    activate(during, local(2026, 3, 10, 10))  # allowed while trialing
    run(local(2026, 3, 16, 23, 59))
    assert not Invoice.objects.filter(office=office).exists()
    assert not LineItem.objects.filter(invoice__office=office).exists()

    # The trial has ended but no run has processed it yet: still trialing.
    with at(local(2026, 3, 17, 0, 10)):
        assert reload(office).subscription_status == SubscriptionStatus.TRIALING
    result = run(local(2026, 3, 17, 0, 20))

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert result.invoices_opened == 1
    (first,) = cycles(office)
    assert first.status == InvoiceStatus.DRAFT
    assert (first.period_start, first.period_end) == (local(2026, 3, 17), local(2026, 4, 17))
    assert patient_lines(first) == {before.pk: LineKind.RECURRING, during.pk: LineKind.RECURRING}
    (setup,) = setup_fee_invoices(office)
    assert setup.total_cents == 50000 and setup.status == InvoiceStatus.OPEN
    assert setup.finalized_at == local(2026, 3, 17, 0, 20)
    assert [line.kind for line in setup.lines.all()] == [LineKind.SETUP_FEE]


def test_it_grants_the_trial_and_the_setup_fee_once_per_office() -> None:
    PlanFactory(code="trial14", trial_days=14, per_patient_cents=450, setup_fee_cents=50000)
    office = OfficeFactory(timezone="America/Chicago")
    patient = PatientFactory(office=office)
    activate(patient, local(2026, 3, 1, 9))
    subscribe(office, "trial14", local(2026, 3, 3, 15))
    run(local(2026, 3, 17, 1))
    cancel(office, local(2026, 3, 20, 9))
    run(local(2026, 4, 17, 1))
    assert reload(office).subscription_status == SubscriptionStatus.CANCELED

    subscribe(office, "trial14", local(2026, 4, 20, 10))

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert office.trial_ends_at is None
    assert office.billing_cycle_anchor_date == date(2026, 4, 20)
    draft = draft_of(office)
    assert draft is not None
    assert (draft.period_start, draft.period_end) == (local(2026, 4, 20, 10), local(2026, 5, 20))
    assert patient_lines(draft) == {patient.pk: LineKind.RECURRING}
    assert len(setup_fee_invoices(office)) == 1
    assert Invoice.objects.filter(office=office, kind=InvoiceKind.ONE_OFF).count() == 1


def test_it_gives_no_second_trial_after_a_trial_was_canceled() -> None:
    """The trial is used up even if canceled; the first cycle ever then opens at the
    resubscription, and with it the setup fee (§7: "when the first cycle that ever opens")."""
    PlanFactory(code="trial14", trial_days=14, per_patient_cents=450, setup_fee_cents=50000)
    office = OfficeFactory(timezone="America/Chicago")
    subscribe(office, "trial14", local(2026, 3, 3, 15))
    cancel(office, local(2026, 3, 5, 9))
    subscribe(office, "trial14", local(2026, 3, 6, 9))

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert office.trial_ends_at is None
    draft = draft_of(office)
    assert draft is not None and draft.period_start == local(2026, 3, 6, 9)
    assert [i.total_cents for i in setup_fee_invoices(office)] == [50000]


def test_it_cancels_a_trial_at_once_and_bills_nothing() -> None:
    PlanFactory(code="trial14", trial_days=14, per_patient_cents=450, setup_fee_cents=50000, minimum_cents=9000)
    office = OfficeFactory(timezone="America/Chicago")
    patient = PatientFactory(office=office)
    subscribe(office, "trial14", local(2026, 3, 3, 15))
    activate(patient, local(2026, 3, 4, 9))
    cancel(office, local(2026, 3, 10, 11))  # a billing admin's cancel: at period end by default

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.CANCELED
    assert office.canceled_at == local(2026, 3, 10, 11)
    run(local(2026, 4, 20, 1))
    assert not Invoice.objects.filter(office=office).exists()
    assert reload(office).subscription_status == SubscriptionStatus.CANCELED


# --- Plan changes (§5, §8) ----------------------------------------------------------------


def test_it_applies_a_plan_change_from_the_next_cycle_start() -> None:
    PlanFactory(code="basic", per_patient_cents=450)
    PlanFactory(code="premium", per_patient_cents=600)
    office = OfficeFactory(timezone="America/Chicago")
    a, b = PatientFactory(office=office), PatientFactory(office=office)
    activate(a, local(2026, 3, 1, 9))
    subscribe(office, "basic", local(2026, 3, 10, 14))

    office = change_plan(office, "premium", local(2026, 3, 20, 9))
    view = subscription_view(reload(office))
    assert (view.plan, view.pending_plan) == ("basic", "premium")
    activate(b, local(2026, 3, 25, 9))  # the current cycle keeps its price
    march = draft_of(office)
    assert march is not None
    assert {line.unit_amount_cents for line in march.lines.all()} == {450}

    run(local(2026, 4, 10, 0, 5))

    march.refresh_from_db()
    assert march.status == InvoiceStatus.OPEN and march.total_cents == 900
    april = draft_of(office)
    assert april is not None and april.plan is not None and april.plan.code == "premium"
    assert [line.unit_amount_cents for line in april.lines.all()] == [600, 600]
    view = subscription_view(reload(office))
    assert (view.plan, view.pending_plan) == ("premium", None)
    assert (view.current_period_start, view.current_period_end) == (local(2026, 4, 10), local(2026, 5, 10))


def test_it_prices_each_missed_cycle_by_the_plan_requested_before_its_start() -> None:
    PlanFactory(code="basic", per_patient_cents=450)
    PlanFactory(code="premium", per_patient_cents=600)
    office = OfficeFactory(timezone="America/Chicago")
    patient = PatientFactory(office=office)
    activate(patient, local(2026, 3, 1, 9))
    subscribe(office, "basic", local(2026, 3, 10, 14))
    change_plan(office, "premium", local(2026, 4, 9, 23, 59))

    run(local(2026, 6, 12, 9))  # two boundaries late

    mar_apr, apr_may, may_jun, jun_jul = cycles(office)
    assert [c.plan.code for c in (mar_apr, apr_may, may_jun, jun_jul) if c.plan] == [
        "basic",
        "premium",
        "premium",
        "premium",
    ]
    assert [c.total_cents for c in (mar_apr, apr_may, may_jun)] == [450, 600, 600]
    assert [line.unit_amount_cents for line in jun_jul.lines.all()] == [600]


def test_it_applies_a_plan_change_made_during_the_trial_to_the_first_cycle() -> None:
    PlanFactory(code="trial14", trial_days=14, per_patient_cents=450, setup_fee_cents=50000)
    PlanFactory(code="premium", per_patient_cents=600, setup_fee_cents=70000)
    office = OfficeFactory(timezone="America/Chicago")
    patient = PatientFactory(office=office)
    activate(patient, local(2026, 3, 1, 9))
    subscribe(office, "trial14", local(2026, 3, 3, 15))
    change_plan(office, "premium", local(2026, 3, 12, 9))
    view = subscription_view(reload(office))
    assert (view.status, view.plan, view.pending_plan) == ("trialing", "trial14", "premium")

    run(local(2026, 3, 17, 0, 30))

    (first,) = cycles(office)
    assert first.plan is not None and first.plan.code == "premium"
    assert [line.unit_amount_cents for line in first.lines.all()] == [600]
    assert [i.total_cents for i in setup_fee_invoices(office)] == [70000]  # the setup fee of the plan in force
    assert subscription_view(reload(office)).pending_plan is None


# --- Cancellation (§8) -------------------------------------------------------------------


def test_it_cancels_at_period_end_with_a_final_invoice_and_no_new_draft() -> None:
    professional_plan()
    office = OfficeFactory(timezone="America/Chicago")
    patient = PatientFactory(office=office)
    activate(patient, local(2026, 3, 1, 9))
    subscribe(office, "professional", local(2026, 3, 10, 14))

    office = cancel(office, local(2026, 3, 20, 9))
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert subscription_view(reload(office)).cancel_at_period_end is True
    run(local(2026, 4, 9, 23))
    assert reload(office).subscription_status == SubscriptionStatus.ACTIVE

    run(local(2026, 4, 10, 0, 5))

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.CANCELED
    assert office.canceled_at == local(2026, 4, 10)
    assert office.cancel_at_period_end is False
    (final,) = cycles(office)
    assert final.status == InvoiceStatus.OPEN and final.period_end == local(2026, 4, 10)
    assert final.total_cents == 15000  # a full cycle: the minimum applies
    assert draft_of(office) is None
    run(local(2026, 5, 10, 1))
    assert len(cycles(office)) == 1
    assert AuditEvent.objects.filter(action="subscription.canceled", office_id=office.pk).count() == 1


def test_it_withdraws_a_pending_cancellation() -> None:
    professional_plan()
    office = OfficeFactory(timezone="America/Chicago")
    patient = PatientFactory(office=office)
    activate(patient, local(2026, 3, 1, 9))
    subscribe(office, "professional", local(2026, 3, 10, 14))
    cancel(office, local(2026, 3, 20, 9))

    with at(local(2026, 3, 25, 9)):
        office = subscription_resume(office=office)
    assert subscription_view(reload(office)).cancel_at_period_end is False
    run(local(2026, 4, 10, 0, 5))

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert office.canceled_at is None
    draft = draft_of(office)
    assert draft is not None and draft.period_start == local(2026, 4, 10)
    assert patient_lines(draft) == {patient.pk: LineKind.RECURRING}


def test_it_cancels_immediately_after_finalizing_missed_cycles_and_cuts_the_current_one() -> None:
    professional_plan()
    office = OfficeFactory(timezone="America/Chicago")
    steady, left_before, left_during, joined = (PatientFactory(office=office) for _ in range(4))
    for p in (steady, left_before, left_during):
        activate(p, local(2026, 1, 2, 9))
    subscribe(office, "professional", local(2026, 1, 10, 14))
    deactivate(left_before, local(2026, 3, 9, 12))  # gone before the March cycle starts
    deactivate(left_during, local(2026, 3, 12, 12))
    activate(joined, local(2026, 3, 14, 12))  # the service catches up Jan–Feb and Feb–Mar first
    cut_at = local(2026, 3, 15, 12, 30)

    with at(cut_at):
        office = subscription_cancel(office=office, actor=operator(), immediately=True)

    office = reload(office)
    assert office.subscription_status == SubscriptionStatus.CANCELED
    assert office.canceled_at == cut_at
    jan, feb, mar = cycles(office)
    assert [c.status for c in (jan, feb, mar)] == [InvoiceStatus.OPEN] * 3
    assert [c.total_cents for c in (jan, feb)] == [15000, 15000]
    assert jan.number and feb.number and mar.number
    assert jan.number < feb.number < mar.number
    assert (mar.period_start, mar.period_end) == (local(2026, 3, 10), cut_at)
    assert patient_lines(mar) == {
        steady.pk: LineKind.RECURRING,
        left_during.pk: LineKind.RECURRING,
        joined.pk: LineKind.ACTIVATION,
    }
    assert not mar.lines.filter(kind=LineKind.MINIMUM_ADJUSTMENT).exists()
    assert mar.total_cents == 3 * 450
    assert draft_of(office) is None
    run(local(2026, 4, 10, 1))
    assert len(cycles(office)) == 3


# --- Finalization outcomes (§6, §7) ------------------------------------------------------


def test_it_marks_a_zero_total_cycle_invoice_paid_with_a_number_and_no_push() -> None:
    PlanFactory(code="free-min", per_patient_cents=450, minimum_cents=0)
    office = OfficeFactory()
    subscribe(office, "free-min", local(2026, 3, 10, 14))
    run(local(2026, 4, 10, 0, 5))

    (inv, _next) = cycles(office)
    assert inv.total_cents == 0
    assert inv.status == InvoiceStatus.PAID
    assert inv.number and number_pattern(2026).match(inv.number)
    assert inv.push_state == PushState.NOT_REQUIRED
    assert inv.paid_at == inv.finalized_at == local(2026, 4, 10, 0, 5)


def test_it_leaves_a_non_zero_invoice_open_with_a_pending_push() -> None:
    PlanFactory(code="basic", per_patient_cents=450, minimum_cents=0)
    office = OfficeFactory()
    patient = PatientFactory(office=office)
    activate(patient, local(2026, 3, 1, 9))
    subscribe(office, "basic", local(2026, 3, 10, 14))
    run(local(2026, 4, 10, 0, 5))

    inv = cycles(office)[0]
    assert inv.total_cents == 450
    assert inv.status == InvoiceStatus.OPEN
    assert inv.push_state == PushState.PENDING
    assert inv.paid_at is None
    assert inv.number and number_pattern(2026).match(inv.number)


def test_it_finalizes_and_numbers_an_operator_one_off_invoice_at_creation() -> None:
    PlanFactory(code="basic")
    office = OfficeFactory()
    subscribe(office, "basic", local(2026, 3, 10, 14))
    staff = operator()
    with at(local(2026, 3, 12, 10)):
        inv = invoice_create_one_off(
            office=office,
            actor=staff,
            lines=[
                {"description": "On-site training, March 2026", "amount_cents": 12000, "quantity": 2},
                {"description": "Data migration", "amount_cents": 30000},
            ],
        )

    inv = Invoice.objects.get(pk=inv.pk)
    assert inv.kind == InvoiceKind.ONE_OFF
    assert inv.status == InvoiceStatus.OPEN
    assert inv.number and number_pattern(2026).match(inv.number)
    assert inv.finalized_at == local(2026, 3, 12, 10)
    assert inv.push_state == PushState.PENDING
    assert inv.subtotal_cents == inv.total_cents == 54000
    assert [
        (li.kind, li.description, li.quantity, li.unit_amount_cents, li.amount_cents) for li in inv.lines.all()
    ] == [
        (LineKind.MANUAL, "On-site training, March 2026", 2, 12000, 24000),
        (LineKind.MANUAL, "Data migration", 1, 30000, 30000),
    ]
    created = AuditEvent.objects.get(action="invoice.one_off_created", target_id=str(inv.pk))
    assert created.actor_id == str(staff.pk)


def test_it_voids_an_open_invoice_and_keeps_its_content() -> None:
    PlanFactory(code="basic")
    office = OfficeFactory()
    subscribe(office, "basic", local(2026, 3, 10, 14))
    with at(local(2026, 3, 12, 10)):
        inv = invoice_create_one_off(office=office, lines=[{"description": "Training", "amount_cents": 5000}])
    number = inv.number

    with at(local(2026, 3, 13, 10)):
        invoice_void(invoice=inv, reason="entered twice")

    inv = Invoice.objects.get(pk=inv.pk)
    assert inv.status == InvoiceStatus.VOID
    assert inv.voided_at == local(2026, 3, 13, 10)
    assert (inv.number, inv.total_cents, inv.lines.count()) == (number, 5000, 1)
    assert AuditEvent.objects.filter(action="invoice.voided", target_id=str(inv.pk)).count() == 1
    with at(local(2026, 3, 14, 10)), pytest.raises(ConflictError):
        invoice_void(invoice=inv)
    draft = draft_of(office)
    assert draft is not None
    with at(local(2026, 3, 14, 10)), pytest.raises(ConflictError):
        invoice_void(invoice=draft)


# --- Activation rules (§5) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "word"), [(SubscriptionStatus.SUSPENDED, "suspended"), (SubscriptionStatus.CANCELED, "canceled")]
)
def test_it_refuses_activation_while_suspended_or_canceled(status: str, word: str) -> None:
    PlanFactory(code="basic")
    office = OfficeFactory()
    patient = PatientFactory(office=office)
    subscribe(office, "basic", local(2026, 3, 10, 14))
    if status == SubscriptionStatus.CANCELED:
        with at(local(2026, 3, 11, 9)):
            subscription_cancel(office=office, immediately=True)
    else:
        Office.objects.filter(pk=office.pk).update(subscription_status=status)  # dunning's outcome

    with at(local(2026, 3, 12, 9)), pytest.raises(ConflictError) as exc:
        patient_activate(patient=patient)

    assert exc.value.status_code == 409
    assert word in exc.value.message
    assert not patient.intervals.exists()


@pytest.mark.parametrize("status", ["none", "trialing", "past_due"])
def test_it_allows_activation_without_subscription_while_trialing_and_past_due(status: str) -> None:
    PlanFactory(code="basic")
    PlanFactory(code="trial14", trial_days=14)
    office = OfficeFactory()
    patient = PatientFactory(office=office)
    if status == "trialing":
        subscribe(office, "trial14", local(2026, 3, 10, 14))
    elif status == "past_due":
        subscribe(office, "basic", local(2026, 3, 10, 14))
        Office.objects.filter(pk=office.pk).update(subscription_status=SubscriptionStatus.PAST_DUE)

    activate(patient, local(2026, 3, 12, 9))

    assert patient.intervals.filter(deactivated_at__isnull=True).count() == 1
    assert reload(office).subscription_status == status
    draft = draft_of(office)
    if status == "past_due":
        assert draft is not None and patient_lines(draft) == {patient.pk: LineKind.ACTIVATION}
    else:
        assert draft is None


def test_it_bills_a_patient_activated_before_subscribing_from_the_first_cycle() -> None:
    PlanFactory(code="basic")
    office = OfficeFactory()
    patient = PatientFactory(office=office)
    activate(patient, local(2026, 2, 20, 9))
    subscribe(office, "basic", local(2026, 3, 10, 14))

    (first,) = cycles(office)
    assert patient_lines(first) == {patient.pk: LineKind.RECURRING}


def test_it_keeps_the_line_of_a_patient_deactivated_in_the_cycle() -> None:
    PlanFactory(code="basic", per_patient_cents=450)
    office = OfficeFactory()
    patient = PatientFactory(office=office)
    subscribe(office, "basic", local(2026, 3, 10, 14))
    activate(patient, local(2026, 3, 15, 9))
    deactivate(patient, local(2026, 3, 16, 9))

    march = draft_of(office)
    assert march is not None and patient_lines(march) == {patient.pk: LineKind.ACTIVATION}
    run(local(2026, 4, 10, 0, 5))
    march.refresh_from_db()
    assert patient_lines(march) == {patient.pk: LineKind.ACTIVATION}
    assert march.total_cents == 450
    april = draft_of(office)
    assert april is not None and patient_lines(april) == {}


# --- Invoice numbers (§6) ----------------------------------------------------------------


def test_it_numbers_invoices_per_utc_year_of_finalization() -> None:
    """Tokyo's 2027-01-01 00:00 is 2026-12-31 15:00 UTC: still a 2026 number."""
    PlanFactory(code="basic", per_patient_cents=450)
    office = OfficeFactory(timezone="Asia/Tokyo")
    other = OfficeFactory(timezone="Asia/Tokyo")
    for o in (office, other):
        patient = PatientFactory(office=o)
        with at(datetime(2026, 10, 1, 9, tzinfo=TOKYO)):
            patient_activate(patient=patient)
        subscribe(o, "basic", datetime(2026, 11, 1, 10, tzinfo=TOKYO))

    run(datetime(2026, 12, 1, 0, 5, tzinfo=TOKYO))
    run(datetime(2027, 1, 1, 0, 5, tzinfo=TOKYO))
    run(datetime(2027, 2, 1, 0, 5, tzinfo=TOKYO))

    prefix = settings.INVOICE_NUMBER_PREFIX
    numbers = sorted(Invoice.objects.exclude(number=None).values_list("number", flat=True))
    assert numbers == [
        f"{prefix}-2026-000001",
        f"{prefix}-2026-000002",
        f"{prefix}-2026-000003",
        f"{prefix}-2026-000004",
        f"{prefix}-2027-000001",
        f"{prefix}-2027-000002",
    ]
    # Finalized at local 2027-01-01 00:05, which is 2026-12-31 in UTC.
    december = Invoice.objects.get(office=office, period_start=datetime(2026, 12, 1, tzinfo=TOKYO))
    assert december.finalized_at == datetime(2026, 12, 31, 15, 5, tzinfo=ZoneInfo("UTC"))
    assert december.number is not None and december.number.startswith(f"{prefix}-2026-")
    january = Invoice.objects.get(office=office, period_start=datetime(2027, 1, 1, tzinfo=TOKYO))
    assert january.number is not None and january.number.startswith(f"{prefix}-2027-")


# --- Audit entries (§9) ------------------------------------------------------------------

PHI = {
    "first_name": "Philippa",
    "last_name": "Quarrington",
    "date_of_birth": date(1984, 7, 3),
    "mrn": "MRN-884412",
    "email": "philippa.q@mailbox.example",
    "phone": "(312) 555-0199",
}


def _phi_strings(patients: list[Patient]) -> list[str]:
    values = []
    for p in patients:
        dob = p.date_of_birth
        values += [
            p.first_name,
            p.last_name,
            p.mrn,
            p.email,
            p.phone,
            "".join(ch for ch in p.phone if ch.isdigit()),
            dob.isoformat(),
            dob.strftime("%m/%d/%Y"),
            f"{p.first_name} {p.last_name}",
        ]
    return [v.lower() for v in values if v]


def test_it_audits_the_lifecycle_with_figures_and_no_phi() -> None:
    professional_plan()
    office = OfficeFactory(timezone="America/Chicago", name="Lakeside Clinic")
    staff = operator()
    patients = [
        patient_create(office=office, **PHI),
        patient_create(
            office=office,
            first_name="Bartholomew",
            last_name="Fennimore",
            date_of_birth=date(1979, 11, 23),
            mrn="MRN-551907",
            email="bart.f@mailbox.example",
            phone="+1 773 555 0142",
        ),
        patient_create(
            office=office,
            first_name="Constance",
            last_name="Whitlock",
            date_of_birth=date(1990, 2, 14),
            mrn="MRN-302266",
        ),
        patient_create(
            office=office,
            first_name="Desmond",
            last_name="Arkwright",
            date_of_birth=date(2001, 5, 30),
            mrn="MRN-640018",
            phone="312-555-0123",
        ),
    ]
    a, b, c, d = patients
    for p in (a, b, c):
        activate(p, local(2026, 3, 1, 9))
    subscribe(office, "professional", local(2026, 3, 10, 14), actor=staff)
    activate(d, local(2026, 3, 20, 10))
    deactivate(a, local(2026, 3, 25, 10))
    activate(a, local(2026, 3, 28, 10))

    result = run(local(2026, 4, 10, 0, 5))

    events = AuditEvent.objects.filter(office_id=office.pk)
    opened = list(events.filter(action="invoice.opened").order_by("id"))
    assert len(opened) == len(cycles(office)) == 2  # one per cycle, not one per line
    assert [e.data["line_count"] for e in opened] == [3, 4]
    assert events.filter(action="patient.activated").count() == 5
    assert events.filter(action="patient.deactivated").count() == 1
    assert sorted(events.filter(action="patient.activated").values_list("target_id", flat=True)) == sorted(
        str(p.pk) for p in (a, a, b, c, d)
    )
    assert events.filter(action="invoice.activation_line_added").count() == 1
    finalized = {e.data["number"]: e.data for e in events.filter(action="invoice.finalized")}
    invoices = {i.number: i for i in Invoice.objects.filter(office=office).exclude(number=None)}
    assert set(finalized) == set(invoices)  # the setup fee and the March cycle
    for number, data in finalized.items():
        assert data["total_cents"] == invoices[number].total_cents
        assert data["status"] == invoices[number].status

    started = AuditEvent.objects.get(action="billing_run.started", target_id=str(result.pk))
    finished = AuditEvent.objects.get(action="billing_run.finished", target_id=str(result.pk))
    assert started.data["offices_due"] == 1
    assert finished.data["offices_done"] == 1
    assert finished.data["invoices_finalized"] == 1
    assert finished.data["invoices_opened"] == 1
    assert finished.data["lines_created"] == 5  # the minimum adjustment and 4 recurring lines
    assert finished.data["amount_finalized_cents"] == 15000
    assert finished.data["errors"] == 0

    phi = _phi_strings(patients)
    for event in AuditEvent.objects.all():
        text = json.dumps(model_to_dict(event), default=str).lower()
        leaked = [value for value in phi if value in text]
        assert not leaked, f"audit event {event.action} carries PHI"
