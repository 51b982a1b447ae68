"""Previewing a boundary that has not come yet (spec §10: a dry run may look ahead).

The dry run at a future instant T, taken now, must show exactly what a real run at T will
finalize and open if no patient changes in between (numbers and finalization instants
aside), and keep nothing; the real run keeps refusing the future. Checked through the
engine, the command, the admin's preview page and, for random histories, against the real
run played later with the clock moved (and against the reference model)."""

from __future__ import annotations

import calendar
import io
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from audit.models import AuditEvent
from billing.engine.office import AdvanceStats
from billing.engine.run import (
    PREVIEW_HORIZON,
    billing_run,
    billing_run_preview,
    next_boundary,
    validate_as_of,
)
from billing.models import (
    BillingRun,
    BillingRunChunk,
    Invoice,
    InvoiceKind,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
    PlanChange,
)
from billing.services import (
    patient_activate,
    patient_deactivate,
    subscription_cancel,
    subscription_change_plan,
    subscription_create,
)
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, professional_plan
from billing.tests.support.reference_model import Interval, PlanTerms, expected_billing, schedule_for
from config.errors import ApplicationError
from offices.models import Office, SubscriptionStatus
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db

CHI = ZoneInfo("America/Chicago")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


# "Now" for the fixed examples: inside the first cycle [2026-03-10 14:00, 2026-04-10 00:00).
NOW = local(2026, 3, 20, 9)
APR10 = local(2026, 4, 10)  # the next boundary (05:00 UTC)
MAY10 = local(2026, 5, 10)  # the one after


# --- What a run did, read inside its transaction -----------------------------------------


def invoice_view(pk: int) -> tuple[Any, ...]:
    """Everything about an invoice but its id, number, and the instants its finalization
    takes from the clock (finalized, due, paid, line creation), which a later run differs on."""
    inv = Invoice.objects.get(pk=pk)
    lines = sorted(
        (line.kind, line.patient_ref or "", line.description, line.quantity, line.unit_amount_cents, line.amount_cents)
        for line in inv.lines.all()
    )
    return (
        inv.office_id,
        inv.kind,
        inv.is_setup_fee,
        inv.status,
        inv.currency,
        inv.plan_id,
        inv.period_start,
        inv.period_end,
        inv.subtotal_cents,
        inv.total_cents,
        inv.push_state,
        inv.number is not None,
        tuple(lines),
    )


@dataclass
class Seen:
    """What a run finalized and opened, and each office's state, read as each office's
    steps ended (for a dry run: inside its transaction, before the rollback)."""

    finalized: list[tuple[Any, ...]]
    opened: list[tuple[Any, ...]]
    offices: dict[int, tuple[Any, ...]]
    figures: dict[str, int]


FIGURES = ("offices_due", "offices_done", "invoices_finalized", "invoices_opened", "lines_created")


def watching(run: Callable[[Callable[[int, AdvanceStats], None]], BillingRun]) -> Seen:
    finalized: list[tuple[Any, ...]] = []
    opened: list[tuple[Any, ...]] = []
    offices: dict[int, tuple[Any, ...]] = {}

    def progress(office_id: int, stats: AdvanceStats) -> None:
        finalized.extend(invoice_view(pk) for pk in stats.finalized_ids)
        opened.extend(invoice_view(pk) for pk in stats.opened_ids)
        office = Office.objects.get(pk=office_id)
        offices[office_id] = (
            office.subscription_status,
            office.canceled_at,
            office.cancel_at_period_end,
            office.current_plan_id,
            office.pending_plan_id,
            office.first_cycle_opened_at,
        )

    done = run(progress)
    figures = {name: getattr(done, name) for name in FIGURES}
    figures["amount_finalized_cents"] = done.amount_finalized_cents
    figures["error_count"] = done.error_count
    return Seen(finalized=sorted(finalized), opened=sorted(opened), offices=offices, figures=figures)


def preview_seen(as_of: datetime, office_ids: list[int] | None = None) -> Seen:
    def go(progress: Callable[[int, AdvanceStats], None]) -> BillingRun:
        return billing_run_preview(as_of=as_of, office_ids=office_ids, progress=progress).run

    return watching(go)


def real_seen(office_ids: list[int] | None = None) -> Seen:
    """A real run as of now (the clock), like the hourly run."""

    def go(progress: Callable[[int, AdvanceStats], None]) -> BillingRun:
        return billing_run(office_ids=office_ids, progress=progress)

    return watching(go)


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row a billing run could write: invoices, lines, numbers, runs, offices, plan
    history, activation history, and the audit trail."""
    models = (
        Invoice,
        LineItem,
        InvoiceNumberSequence,
        BillingRun,
        BillingRunChunk,
        Office,
        Plan,
        PlanChange,
        ActivationInterval,
        AuditEvent,
    )
    return {m._meta.label: list(m.objects.order_by("pk").values()) for m in models}


# --- The fixed examples -----------------------------------------------------------------


@dataclass
class Clinic:
    office: Office
    patients: list[Patient]


@pytest.fixture
def clinic() -> Clinic:
    """Professional plan (450 per patient, minimum 15000, setup 50000) in Chicago: P0 and P1
    active since March 1; subscribed March 10 at 14:00; P2 activated on the 15th; P1
    deactivated on the 18th (billed in March, not after)."""
    professional_plan()
    office = OfficeFactory(name="Maple Street Clinic", timezone="America/Chicago")
    patients = [PatientFactory(office=office) for _ in range(3)]
    with at(local(2026, 3, 1, 9)):
        patient_activate(patient=patients[0])
        patient_activate(patient=patients[1])
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="professional")
    with at(local(2026, 3, 15, 9)):
        patient_activate(patient=patients[2])
    with at(local(2026, 3, 18, 9)):
        patient_deactivate(patient=patients[1])
    return Clinic(office=office, patients=patients)


def _lines_of(view: tuple[Any, ...]) -> list[tuple[str, str, int]]:
    return [(kind, ref, amount) for kind, ref, _desc, _qty, _unit, amount in view[-1]]


def test_it_previews_the_next_boundary_as_the_real_run_will_bill_it_and_keeps_nothing(clinic: Clinic) -> None:
    p0, p1, p2 = (p.billing_ref for p in clinic.patients)
    with at(NOW):
        before = snapshot()
        preview = preview_seen(APR10)
        assert snapshot() == before  # invoices, lines, numbers, runs, audit rows: as they were

    [march] = preview.finalized
    assert (march[6], march[7]) == (local(2026, 3, 10, 14), APR10)
    assert (march[3], march[9]) == (InvoiceStatus.OPEN, 15000)
    assert sorted(_lines_of(march)) == sorted(
        [
            (LineKind.RECURRING, p0, 450),
            (LineKind.RECURRING, p1, 450),  # deactivated during March: billed for March
            (LineKind.ACTIVATION, p2, 450),
            (LineKind.MINIMUM_ADJUSTMENT, "", 13650),
        ]
    )
    [april] = preview.opened
    assert (april[3], april[6], april[7]) == (InvoiceStatus.DRAFT, APR10, MAY10)
    assert sorted(_lines_of(april)) == sorted([(LineKind.RECURRING, p0, 450), (LineKind.RECURRING, p2, 450)])
    assert preview.figures["invoices_finalized"] == 1 and preview.figures["amount_finalized_cents"] == 15000

    with at(APR10):  # the clock reaches the boundary; nothing changed in between
        real = real_seen()
    assert real == preview


@pytest.mark.parametrize(
    "as_of",
    [MAY10, MAY10 + timedelta(hours=7), local(2026, 7, 10) - timedelta(microseconds=1)],
    ids=["two-boundaries", "two-boundaries-and-some", "three-boundaries-less-1us"],
)
def test_it_previews_several_boundaries_in_order_like_a_run_that_catches_up(clinic: Clinic, as_of: datetime) -> None:
    with at(NOW):
        before = snapshot()
        preview = preview_seen(as_of)
        assert snapshot() == before
    cycles = [v for v in preview.finalized if v[1] == InvoiceKind.CYCLE]
    assert [(v[6], v[7]) for v in cycles][:2] == [(local(2026, 3, 10, 14), APR10), (APR10, MAY10)]
    assert [v[9] for v in cycles] == [15000] * len(cycles)  # each at the minimum
    with at(as_of):  # a real run that starts late catches up the same boundaries (spec §6)
        assert real_seen() == preview


def test_it_previews_a_trial_end_with_its_setup_fee_and_the_first_cycle() -> None:
    PlanFactory(code="trial14", per_patient_cents=1999, setup_fee_cents=50000, trial_days=14)
    office = OfficeFactory(name="Cedar Clinic", timezone="America/Chicago")
    patient = PatientFactory(office=office)
    with at(local(2026, 3, 10, 14)):
        subscription_create(office=office, plan_code="trial14")
        patient_activate(patient=patient)
    trial_end = local(2026, 3, 24)
    with at(NOW):
        assert next_boundary(office_ids=[office.pk]) == trial_end
        before = snapshot()
        preview = preview_seen(trial_end)
        assert snapshot() == before
    [setup] = preview.finalized
    assert setup[2] is True and setup[9] == 50000
    [first] = preview.opened
    assert (first[6], first[7]) == (trial_end, local(2026, 4, 24))
    assert preview.offices[office.pk][0] == SubscriptionStatus.ACTIVE
    assert Office.objects.get(pk=office.pk).subscription_status == SubscriptionStatus.TRIALING  # kept nothing
    with at(trial_end):
        assert real_seen() == preview


def test_it_previews_a_cancellation_at_period_end_and_a_plan_change_at_their_boundary(clinic: Clinic) -> None:
    other = OfficeFactory(name="Birch Clinic", timezone="America/Chicago")
    premium = PlanFactory(code="premium", per_patient_cents=600)
    with at(local(2026, 3, 10, 16)):
        subscription_create(office=other, plan_code="professional")
    with at(NOW):
        subscription_cancel(office=clinic.office)  # at period end
        subscription_change_plan(office=other, plan_code="premium")
        before = snapshot()
        preview = preview_seen(MAY10)
        assert snapshot() == before
    assert preview.offices[clinic.office.pk][:3] == (SubscriptionStatus.CANCELED, APR10, False)
    assert [v[0] for v in preview.opened] == [other.pk, other.pk]  # the canceled office opens nothing
    assert [v[5] for v in preview.opened] == [premium.pk, premium.pk]  # the change applies from April
    with at(MAY10):
        assert real_seen() == preview


def test_it_refuses_the_future_to_a_real_run_and_too_far_a_future_to_a_dry_run(clinic: Clinic) -> None:
    with at(NOW):
        before = snapshot()
        with pytest.raises(ApplicationError, match="is in the future; a run may only bill what has happened"):
            billing_run(as_of=APR10)
        with pytest.raises(ApplicationError, match="in the future"):
            validate_as_of(NOW + timedelta(seconds=6))
        assert validate_as_of(NOW + timedelta(seconds=6), allow_future=True) == NOW + timedelta(seconds=6)
        assert validate_as_of(NOW + timedelta(seconds=3), allow_future=True) == NOW  # skew: still clamped
        assert validate_as_of(NOW + PREVIEW_HORIZON, allow_future=True) == NOW + PREVIEW_HORIZON
        with pytest.raises(ApplicationError, match="366 days ahead"):
            billing_run_preview(as_of=NOW + PREVIEW_HORIZON + timedelta(seconds=1))
        assert snapshot() == before


def test_it_finds_the_earliest_next_boundary_among_offices(clinic: Clinic) -> None:
    tokyo = OfficeFactory(name="Tokyo Clinic", timezone="Asia/Tokyo")
    idle = OfficeFactory(name="Idle Clinic")
    with at(datetime(2026, 3, 25, 3, tzinfo=UTC)):  # 12:00 in Tokyo: anchored on the 25th
        subscription_create(office=tokyo, plan_code="professional")
    with at(NOW):
        assert next_boundary(office_ids=[idle.pk]) is None
        assert next_boundary(office_ids=[clinic.office.pk, idle.pk]) == APR10
    with at(local(2026, 4, 20)):  # Chicago's April draft is not open yet (no run): its end comes
        assert next_boundary(office_ids=[clinic.office.pk]) == MAY10
        assert next_boundary(office_ids=[clinic.office.pk, tokyo.pk]) == datetime(
            2026, 4, 25, tzinfo=ZoneInfo("Asia/Tokyo")
        )


# --- The command ---------------------------------------------------------------------------


def run_command(*args: str) -> str:
    out = io.StringIO()
    call_command("run_billing_cycle", *args, stdout=out, stderr=io.StringIO(), no_progress=True)
    return out.getvalue()


def table_rows(output: str) -> list[str]:
    """The summary table's rows without the invoice number column."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("office"))
    rows = []
    for line in lines[start + 2 :]:
        if line.startswith("offices due"):
            break
        rows.append(" ".join(re.sub(r"(\(would number\)|INV-\d{4}-\d{6})", "", line).split()))
    return rows


def test_it_dry_runs_the_command_at_a_future_instant_and_refuses_it_for_real(clinic: Clinic) -> None:
    future = "2026-04-10T06:00:00+00:00"  # 01:00 in Chicago on April 10, the boundary just passed
    with at(NOW):
        before = snapshot()
        dry = run_command("--as-of", future, "--dry-run")
        assert snapshot() == before
        with pytest.raises(CommandError, match="in the future"):
            run_command("--as-of", future)
        assert snapshot() == before
    assert "DRY RUN — nothing was written (as of 2026-04-10T06:00:00+00:00)" in dry
    assert "Looking ahead" in dry
    assert table_rows(dry) == ["Maple Street Clinic cycle 2026-03-10..2026-04-10 4 150.00 USD open"]
    assert "invoices finalized 1, opened 1; lines 3; finalized total 150.00 USD" in dry  # the minimum and April's 2
    with at(datetime(2026, 4, 10, 6, tzinfo=UTC)):
        real = run_command("--as-of", future)
    assert table_rows(real) == table_rows(dry)


# --- The admin's preview page ------------------------------------------------------------

ISO_WITH_MICROSECONDS = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}\.\d+")
ISO_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
CODE_NAMES = re.compile(r"\b\w+_(cents|finalized|opened|due|done|count|created)\b|\(\d+ cents\)|§\d|Office filter")


@pytest.fixture
def operator_client(client: Client, settings: Any) -> Client:
    settings.BILLING_DEFAULT_TIMEZONE = "America/New_York"
    user = get_user_model().objects.create_superuser(username="root", email="root@vendor.example", password="x")
    client.force_login(user)
    return client


def preview_page(client: Client, office_ids: list[int], **extra: str) -> str:
    changelist = reverse("admin:offices_office_changelist")
    data = {"action": "preview_billing", "_selected_action": [str(pk) for pk in office_ids], **extra}
    if not extra:
        data["index"] = "0"  # as posted from the changelist's action bar
    response = client.post(changelist, data, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def visible_text(html: str) -> str:
    """The page as read: no tags, no attribute values (ids, names, classes, scripts)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def test_it_shows_a_chosen_future_date_in_peoples_terms_and_keeps_nothing(
    clinic: Clinic, operator_client: Client
) -> None:
    with at(NOW):
        before = snapshot()
        html = preview_page(operator_client, [clinic.office.pk], preview_as_of="date", preview_on="2026-04-10")
        assert snapshot() == before
    text = visible_text(html)
    assert "nothing was saved" in text
    assert "the end of 2026-04-10" in text
    assert "2026-04-11 00:00-04:00 (America/New_York)" in text  # the next midnight, reporting zone
    assert "$150.00 USD" in text  # March, at the minimum
    assert "2026-03-10 to 2026-04-10" in text  # its period, the office's dates
    assert "2026-04-10 to 2026-05-10" in text  # April's draft
    assert re.search(r"<th[^>]*>Invoices finalized</th><td[^>]*>1</td>", html)
    assert re.search(r"<th[^>]*>Amount finalized</th><td[^>]*>\$150\.00 USD</td>", html)
    assert "patients active now stay active" in text
    assert not CODE_NAMES.search(text), CODE_NAMES.search(text)
    assert not ISO_WITH_MICROSECONDS.search(html) and not ISO_INSTANT.search(text)
    # The run button only for a moment that has passed; the page says why it is missing.
    assert 'value="run_billing_now"' not in html and 'There is no "Run billing now" button' in text
    assert 'value="preview_billing"' in html and f'value="{clinic.office.pk}"' in html  # re-posts the same offices


def test_it_stops_at_the_end_of_the_day_in_the_reporting_zone(clinic: Clinic, operator_client: Client) -> None:
    with at(NOW):
        # The end of April 9 in New York is 23:00 on April 9 in Chicago: March has not ended there.
        html = preview_page(operator_client, [clinic.office.pk], preview_as_of="date", preview_on="2026-04-09")
    assert "$150.00 USD" not in html and "2026-04-10 00:00-04:00 (America/New_York)" in html


def test_it_previews_now_by_default_with_the_run_button_and_todays_date_in_the_form(
    clinic: Clinic, operator_client: Client
) -> None:
    with at(NOW):
        html = preview_page(operator_client, [clinic.office.pk])
    text = visible_text(html)
    assert "as of now" in " ".join(text.split())
    assert "2026-03-20 10:00-04:00 (America/New_York)" in text
    assert re.search(r'<input type="date" name="preview_on" value="2026-03-20"', html)  # today, reporting zone
    assert 'value="run_billing_now"' in html
    assert "No selected office has a billing period or a trial ending by then." in text
    assert not CODE_NAMES.search(text) and not ISO_WITH_MICROSECONDS.search(html)


def test_it_previews_the_next_boundary_of_the_selected_offices(clinic: Clinic, operator_client: Client) -> None:
    idle = OfficeFactory(name="Idle Clinic")
    with at(NOW):
        before = snapshot()
        html = preview_page(operator_client, [clinic.office.pk, idle.pk], preview_as_of="next")
        assert snapshot() == before
    text = visible_text(html)
    assert "the next boundary" in text
    assert "2026-04-10 01:00-04:00 (America/New_York)" in text  # Chicago's midnight, read in New York
    assert "$150.00 USD" in text and "2026-03-10 to 2026-04-10" in text
    assert 'value="run_billing_now"' not in html


def test_it_refuses_a_date_beyond_the_horizon_and_shows_now_instead(clinic: Clinic, operator_client: Client) -> None:
    with at(NOW):
        html = preview_page(operator_client, [clinic.office.pk], preview_as_of="date", preview_on="2027-04-01")
    assert "A preview looks at most 366 days ahead" in html
    assert "2026-03-20 10:00-04:00 (America/New_York)" in html


# --- Property: preview at T now == real run at T later ------------------------------------

ZONES = ("UTC", "America/Chicago", "America/Santiago", "Australia/Sydney", "Asia/Kolkata", "Pacific/Chatham")
MICROSECOND = timedelta(microseconds=1)
NEAR = (timedelta(0), MICROSECOND, -MICROSECOND, timedelta(seconds=6), timedelta(minutes=-5), timedelta(days=1))
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("BILLING_PROPERTY_EXAMPLES", "30")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Future:
    """An office's history up to `now` (subscription, patients, runs), then a look ahead to `then`."""

    zone_name: str
    plan: PlanTerms
    subscribed_at: datetime
    histories: tuple[tuple[datetime, ...], ...]  # per patient: activate, deactivate, activate, …
    runs: tuple[datetime, ...]
    now: datetime
    then: datetime

    def events(self) -> list[tuple[datetime, int, str, int | None]]:
        events: list[tuple[datetime, int, str, int | None]] = [(self.subscribed_at, 0, "subscribe", None)]
        for index, instants in enumerate(self.histories):
            events += [(t, 1, "activate" if i % 2 == 0 else "deactivate", index) for i, t in enumerate(instants)]
        events += [(t, 2, "run", None) for t in self.runs]
        return sorted(events, key=lambda e: (e[0], e[1], -1 if e[3] is None else e[3]))

    def intervals(self) -> dict[int, list[Interval]]:
        return {
            index: [
                (instants[i], instants[i + 1] if i + 1 < len(instants) else None) for i in range(0, len(instants), 2)
            ]
            for index, instants in enumerate(self.histories)
        }


@st.composite
def futures(draw: st.DrawFn) -> Future:
    zone_name = draw(st.sampled_from(ZONES))
    tz = ZoneInfo(zone_name)
    year, month = draw(st.integers(2026, 2028)), draw(st.integers(1, 12))
    day = min(draw(st.one_of(st.integers(28, 31), st.integers(1, 31))), calendar.monthrange(year, month)[1])
    subscribed_at = datetime(year, month, day, draw(st.sampled_from([0, 9, 23])), 30, tzinfo=tz).astimezone(UTC)
    plan = PlanTerms(
        per_patient_cents=draw(st.sampled_from([450, 0, 1999])),
        minimum_cents=draw(st.sampled_from([0, 900, 15000])),
        setup_fee_cents=draw(st.sampled_from([0, 50000])),
        trial_days=draw(st.sampled_from([0, 0, 1, 14])),
    )
    schedule = schedule_for(plan=plan, zone_name=zone_name, subscribed_at=subscribed_at)
    keys = [schedule.first_start, *(schedule.boundary(k) for k in range(1, 6))]

    def instant(lo: datetime, hi: datetime) -> st.SearchStrategy[datetime]:
        """Anywhere in [lo, hi], often on or next to a boundary (clamped into the range)."""
        near = st.builds(lambda key, delta: key + delta, st.sampled_from(keys), st.sampled_from(NEAR))
        anywhere = st.integers(0, (hi - lo) // MICROSECOND).map(lambda us: lo + us * MICROSECOND)
        return st.one_of(near, anywhere).map(lambda t: min(max(t, lo), hi))

    now = draw(instant(subscribed_at, keys[3]))
    lo = subscribed_at - timedelta(days=3)
    histories = tuple(
        tuple(sorted(set(draw(st.lists(instant(lo, now), max_size=5)))))
        for _ in range(draw(st.integers(min_value=1, max_value=3)))
    )
    runs = tuple(sorted(set(draw(st.lists(instant(subscribed_at, now), max_size=3)))))
    soonest = now + timedelta(seconds=6)  # beyond the clock-skew tolerance: really ahead
    ahead = [k for k in keys if k >= soonest] or [soonest]
    then = draw(
        st.one_of(
            st.builds(lambda key, delta: key + delta, st.sampled_from(ahead), st.sampled_from(NEAR[:3])),
            st.integers(0, 100 * 86400 * 10**6).map(lambda us: soonest + us * MICROSECOND),
        ).map(lambda t: max(t, soonest))
    )
    return Future(zone_name, plan, subscribed_at, histories, runs, now, then)


@contextmanager
def rolled_back() -> Iterator[None]:
    """Each hypothesis example starts from the same database."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def play(future: Future) -> tuple[Office, list[Patient], datetime]:
    """The history up to `now` through the real services, each at its instant; returns the
    office, its patients and the latest instant the engine caught the office up to."""
    terms = future.plan
    plan = PlanFactory(
        per_patient_cents=terms.per_patient_cents,
        minimum_cents=terms.minimum_cents,
        setup_fee_cents=terms.setup_fee_cents,
        trial_days=terms.trial_days,
    )
    office = OfficeFactory(timezone=future.zone_name)
    patients = [PatientFactory(office=office) for _ in future.histories]
    caught_up = future.subscribed_at
    for moment, _, action, index in future.events():
        with at(moment):
            if action == "subscribe":
                subscription_create(office=office, plan_code=plan.code)
            elif action == "activate":
                assert index is not None
                patient_activate(patient=patients[index])
            elif action == "deactivate":
                assert index is not None
                patient_deactivate(patient=patients[index])
            else:
                assert billing_run(office_ids=[office.pk]).error_count == 0
        if action in ("activate", "run") and moment >= future.subscribed_at:
            caught_up = max(caught_up, moment)  # both catch the office up first (spec §5, §6)
    return office, patients, caught_up


def assert_preview_agrees_with_the_model(
    future: Future, preview: Seen, patients: list[Patient], caught_up: datetime
) -> None:
    """The cycles the preview finalizes are the reference model's cycles ending in
    (caught_up, then], from the history as it stands now: patients active now stay active."""
    expected = expected_billing(
        plan=future.plan,
        zone_name=future.zone_name,
        subscribed_at=future.subscribed_at,
        histories=future.intervals(),
        as_of=future.then,
    )
    ref = {i: p.billing_ref for i, p in enumerate(patients)}
    want = [
        (
            c.start,
            c.end,
            sorted(
                [(kind, ref[i]) for i, kind in c.lines.items()]
                + ([("minimum_adjustment", "")] if c.minimum_adjustment_cents else [])
            ),
            c.total_cents,
            c.status,
        )
        for c in expected.finalized
        if c.end > caught_up
    ]
    got = [
        (v[6], v[7], sorted((line[0], line[1]) for line in v[-1]), v[9], v[3])
        for v in preview.finalized
        if v[1] == InvoiceKind.CYCLE
    ]
    assert sorted(got) == sorted(want)


@PROPERTY_SETTINGS
@given(future=futures())
@example(
    future=Future(
        zone_name="America/Chicago",
        plan=PlanTerms(per_patient_cents=450, minimum_cents=15000, setup_fee_cents=50000),
        subscribed_at=local(2026, 3, 10, 14).astimezone(UTC),
        histories=((local(2026, 3, 1, 9),), (local(2026, 3, 1, 9), local(2026, 3, 18, 9)), (local(2026, 3, 15, 9),)),
        runs=(),
        now=NOW,
        then=APR10,
    )
)
@example(  # the trial ends ahead; previewed across a UTC new year
    future=Future(
        zone_name="Australia/Sydney",
        plan=PlanTerms(per_patient_cents=1999, setup_fee_cents=50000, trial_days=14),
        subscribed_at=datetime(2026, 12, 1, 1, tzinfo=UTC),
        histories=((datetime(2026, 11, 20, tzinfo=UTC),), (datetime(2026, 12, 10, tzinfo=UTC),)),
        runs=(),
        now=datetime(2026, 12, 12, tzinfo=UTC),
        then=datetime(2027, 2, 20, tzinfo=UTC),
    )
)
def test_it_previews_a_future_instant_exactly_as_the_real_run_then_bills_it(future: Future) -> None:
    """For a random history up to now, the dry run as of a later instant T, taken now,
    keeps nothing and shows exactly the invoices (lines, totals, statuses, periods), office
    states and figures that the real run makes once the clock reaches T with no change in
    between; and the cycles it finalizes are the reference model's."""
    with rolled_back():
        office, patients, caught_up = play(future)
        with at(future.now):
            before = snapshot()
            preview = preview_seen(future.then, [office.pk])
            assert snapshot() == before
        assert preview.figures["error_count"] == 0
        event(f"invoices finalized by the preview: {min(len(preview.finalized), 3)}+")
        assert_preview_agrees_with_the_model(future, preview, patients, caught_up)
        with at(future.then):
            real = real_seen([office.pk])
        assert real == preview
