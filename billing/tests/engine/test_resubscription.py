"""Resubscription edges (spec §4, §7; issue 8, defects 12, 15 and 19): subscribing catches
the office up first; a resubscription never gets a trial; the setup fee is decided by
whether a cycle ever opened, even one that a same-instant cancel discarded."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.models import Invoice, InvoiceKind, LineKind
from billing.services import subscription_cancel, subscription_create
from billing.tests.support.factories import OfficeFactory, PlanFactory, at, professional_plan
from offices.models import Office, SubscriptionStatus

pytestmark = pytest.mark.django_db
CHI = ZoneInfo("America/Chicago")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


def _setup_fees(office: Office) -> list[int]:
    return list(Invoice.objects.filter(office=office, is_setup_fee=True).values_list("lines__amount_cents", flat=True))


def test_it_catches_up_a_passed_cancellation_before_subscribing_again() -> None:
    professional_plan()
    office = OfficeFactory()
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="professional")
        subscription_cancel(office=office)  # at period end: 2026-04-10 00:00 local
    # The boundary has passed but no run has processed it yet.
    with at(local(2026, 4, 12, 9)):
        office = subscription_create(office=office, plan_code="professional")
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    first = Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, period_start=local(2026, 3, 10, 14))
    assert first.period_end == local(2026, 4, 10) and first.number  # finalized by the catch-up
    assert _setup_fees(office) == [50000]  # and no second setup fee


def test_it_gives_a_resubscription_no_trial_even_on_a_plan_with_one() -> None:
    PlanFactory(code="basic", trial_days=0)
    PlanFactory(code="trial", trial_days=14)
    office = OfficeFactory()
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="basic")
        subscription_cancel(office=office, immediately=True)
    with at(local(2026, 3, 20, 9)):
        office = subscription_create(office=office, plan_code="trial")
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert office.trial_ends_at is None


def test_it_bills_no_second_setup_fee_after_a_same_instant_cancel_and_resubscription() -> None:
    professional_plan()
    office = OfficeFactory()
    moment = local(2026, 3, 10, 14)
    with at(moment):
        subscription_create(office=office, plan_code="professional")
        subscription_cancel(office=office, immediately=True)  # the first draft opened this instant: discarded
        office = subscription_create(office=office, plan_code="professional")  # was an IntegrityError (500)
    assert office.subscription_status == SubscriptionStatus.ACTIVE
    assert _setup_fees(office) == [50000]


def test_it_bills_no_setup_fee_when_the_first_cycle_opened_on_a_plan_without_one() -> None:
    PlanFactory(code="trial-free", trial_days=14, setup_fee_cents=0)
    professional_plan()
    office = OfficeFactory()
    with at(local(2026, 3, 10, 14)):
        office = subscription_create(office=office, plan_code="trial-free")
    trial_end = office.trial_ends_at
    assert trial_end is not None and trial_end == local(2026, 3, 24)
    with at(trial_end):
        subscription_cancel(office=office, immediately=True)  # the first cycle opens, then is cut at once
    with at(trial_end + timedelta(days=1)):
        office = subscription_create(office=office, plan_code="professional")
    assert _setup_fees(office) == []
    assert not Invoice.objects.filter(office=office, lines__kind=LineKind.SETUP_FEE).exists()
