"""Rules of docs/payment-plan.md that docs/spec-map.md listed as `no test`, each proved
through the real services, the billing run, the command or the API (§1–§10)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery.beat import Scheduler
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import Client

from audit.models import AuditEvent, Outcome
from audit.verify import verify_chain
from billing.engine.labels import PATIENT_LINE_PREFIX
from billing.engine.run import billing_run
from billing.models import (
    BillingRun,
    BillingRunError,
    BillingRunStatus,
    Invoice,
    InvoiceKind,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
    PlanChange,
    PlanChangeKind,
)
from billing.phi_guard import PhiRefused, phi_check
from billing.services import (
    invoice_create_one_off,
    patient_activate,
    patient_deactivate,
    plan_create,
    subscription_cancel,
    subscription_change_plan,
    subscription_create,
    subscription_resume,
    subscription_view,
)
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at, professional_plan
from config.celery_app import app
from config.errors import ApplicationError, ConflictError
from offices.models import Company, Office, Role, SubscriptionStatus
from offices.services import office_member_grant
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db

CHI = ZoneInfo("America/Chicago")
ROOT = Path(__file__).resolve().parents[2]


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHI)


SUBSCRIBED = local(2026, 3, 10, 14)
FIRST_END = local(2026, 4, 10)  # the first cycle of an office subscribed at SUBSCRIBED
AFTER_FIRST_END = local(2026, 4, 10, 1)


def reload(office: Office) -> Office:
    return Office.objects.get(pk=office.pk)


def subscribed(plan_code: str = "basic", *, patients: int = 1, name: str | None = None) -> tuple[Office, list[Patient]]:
    """An office in Chicago, `patients` patients active since March 1, subscribed at SUBSCRIBED."""
    office = OfficeFactory(timezone="America/Chicago", **({"name": name} if name else {}))
    people = [PatientFactory(office=office) for _ in range(patients)]
    with at(local(2026, 3, 1, 9)):
        for patient in people:
            patient_activate(patient=patient)
    with at(SUBSCRIBED):
        subscription_create(office=office, plan_code=plan_code)
    return reload(office), people


def cycles(office: Office) -> list[Invoice]:
    return list(Invoice.objects.filter(office=office, kind=InvoiceKind.CYCLE).order_by("period_start"))


def draft_of(office: Office) -> Invoice:
    return Invoice.objects.get(office=office, kind=InvoiceKind.CYCLE, status=InvoiceStatus.DRAFT)


def patient_lines(invoice: Invoice) -> dict[int, str]:
    return {line.patient_id: line.kind for line in invoice.lines.filter(patient__isnull=False) if line.patient_id}


def api(user: Any, method: str, path: str, body: Any = None) -> Any:
    """One API request as `user`, logged in at the current (frozen) clock."""
    client = Client()
    client.force_login(user)
    if body is None:
        return getattr(client, method)(f"/api/v1/{path}")
    return getattr(client, method)(f"/api/v1/{path}", data=json.dumps(body), content_type="application/json")


def member(office: Office, role: str, username: str) -> Any:
    user = get_user_model().objects.create_user(username=username, password="pw-spec-gaps-1234")
    office_member_grant(office=office, user=user, role=role)
    return user


# --- §1 Who is who ------------------------------------------------------------------------


def test_it_keeps_every_billing_setting_on_the_office_and_none_on_its_company() -> None:
    company = Company.objects.create(name="Northwind Practice Group")
    own = {field.name for field in Company._meta.get_fields() if getattr(field, "concrete", False)}
    assert own == {"id", "name", "created_at"}  # no plan, currency, zone, Stripe or payment field
    billing_fields = {"current_plan", "subscription_status", "timezone", "payment_provider_customer_id"}
    assert billing_fields <= {field.name for field in Office._meta.get_fields()}

    # Two offices of one company bill on their own plans, zones and currencies.
    PlanFactory(code="basic")
    PlanFactory(code="euro", currency="eur")
    north = OfficeFactory(company=company, timezone="America/Chicago")
    south = OfficeFactory(company=company, timezone="Europe/Berlin")
    with at(SUBSCRIBED):
        subscription_create(office=north, plan_code="basic")
        subscription_create(office=south, plan_code="euro")
    assert {(o.current_plan.code, o.timezone, draft_of(o).currency) for o in company.offices.all()} == {
        ("basic", "America/Chicago", "usd"),
        ("euro", "Europe/Berlin", "eur"),
    }


# --- §2 Money and time; §7 the one-off currency ------------------------------------------


def test_it_bills_every_invoice_in_the_currency_of_the_plan(settings: Any) -> None:
    created = plan_create(code="plain", name="Plain", per_patient_cents=450)
    assert created.currency == "usd"  # BILLING_DEFAULT_CURRENCY as shipped
    settings.BILLING_DEFAULT_CURRENCY = "cad"
    assert plan_create(code="maple", name="Maple", per_patient_cents=450).currency == "cad"
    assert plan_create(
        code="euro", name="Euro", per_patient_cents=400, setup_fee_cents=9000, currency="EUR"
    ).currency == ("eur")

    office, _ = subscribed("euro", patients=2)
    with at(AFTER_FIRST_END):
        billing_run()

    invoices = Invoice.objects.filter(office=office).order_by("id")
    assert [(inv.kind, inv.is_setup_fee) for inv in invoices] == [
        (InvoiceKind.CYCLE, False),
        (InvoiceKind.ONE_OFF, True),
        (InvoiceKind.CYCLE, False),
    ]
    assert {inv.currency for inv in invoices} == {"eur"}
    assert cycles(office)[0].total_cents == 800


def test_it_bills_a_one_off_invoice_in_the_current_plans_currency_else_the_default(settings: Any) -> None:
    PlanFactory(code="euro", currency="eur")
    on_euro, _ = subscribed("euro", patients=0)
    no_plan = OfficeFactory()
    settings.BILLING_DEFAULT_CURRENCY = "cad"
    lines = [{"description": "On-site training", "amount_cents": 12000}]
    with at(local(2026, 3, 12, 10)):
        euro_invoice = invoice_create_one_off(office=on_euro, lines=lines)
        default_invoice = invoice_create_one_off(office=no_plan, lines=lines)
    assert (euro_invoice.currency, euro_invoice.status) == ("eur", InvoiceStatus.OPEN)
    assert (default_invoice.currency, default_invoice.status) == ("cad", InvoiceStatus.OPEN)


# --- §3 Plans --------------------------------------------------------------------------------


def test_it_refuses_a_second_plan_with_an_existing_code() -> None:
    plan_create(code="basic", name="Basic", per_patient_cents=450)
    with pytest.raises(ApplicationError) as exc:
        plan_create(code="basic", name="Basic again", per_patient_cents=300)
    assert exc.value.status_code == 400 and "'basic' already exists" in exc.value.message
    assert list(Plan.objects.values_list("code", "name", "per_patient_cents")) == [("basic", "Basic", 450)]
    # The database refuses it too, whatever writes the row.
    with pytest.raises(IntegrityError), transaction.atomic():
        Plan.objects.create(code="basic", name="Raw", per_patient_cents=100)


# --- §5 Patient billing ----------------------------------------------------------------------


def test_it_moves_a_patients_event_one_microsecond_past_an_earlier_one_at_the_same_instant() -> None:
    office = OfficeFactory()
    patient = PatientFactory(office=office)
    instant = local(2026, 3, 12, 9)
    with at(instant):  # the clock does not move between the four calls
        patient_activate(patient=patient)
        patient_deactivate(patient=patient)
        patient_activate(patient=patient)
        patient_deactivate(patient=patient)

    tick = timedelta(microseconds=1)
    history = list(ActivationInterval.objects.filter(patient=patient).order_by("activated_at"))
    assert [(i.activated_at, i.deactivated_at) for i in history] == [
        (instant, instant + tick),
        (instant + 2 * tick, instant + 3 * tick),
    ]


@pytest.mark.parametrize(
    "status", [SubscriptionStatus.NONE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED, "canceled"]
)
def test_it_always_allows_deactivation_whatever_the_offices_status(status: str) -> None:
    PlanFactory(code="basic")
    if status == SubscriptionStatus.NONE:
        office = OfficeFactory()
        patient = PatientFactory(office=office)
        with at(local(2026, 3, 1, 9)):
            patient_activate(patient=patient)
    else:
        office, (patient,) = subscribed("basic")
    if status == "canceled":
        with at(local(2026, 3, 11, 9)):
            subscription_cancel(office=office, immediately=True)
    elif status != SubscriptionStatus.NONE:
        Office.objects.filter(pk=office.pk).update(subscription_status=status)  # dunning's outcome
    staff = member(office, Role.OFFICE_STAFF, "frontdesk")

    with at(local(2026, 3, 12, 9)):
        response = api(staff, "post", f"patients/{patient.pk}/deactivate/")

    assert response.status_code == 200, response.content
    (interval,) = ActivationInterval.objects.filter(patient=patient)
    assert interval.deactivated_at == local(2026, 3, 12, 9)
    assert reload(office).subscription_status == status
    assert AuditEvent.objects.filter(action="patient.deactivated", target_id=str(patient.pk)).count() == 1


def test_it_makes_the_lines_equal_the_billable_patients_at_finalization() -> None:
    """The safety net of §5: a draft that lost a patient's line, or carries lines of
    patients not billable in its period, is put right when it is finalized."""
    PlanFactory(code="basic", per_patient_cents=450, minimum_cents=0)
    office = OfficeFactory(timezone="America/Chicago")
    stays, lost, joined, never, left = (PatientFactory(office=office) for _ in range(5))
    with at(local(2026, 3, 1, 9)):
        patient_activate(patient=stays)
        patient_activate(patient=lost)
        patient_activate(patient=left)
    with at(local(2026, 3, 5, 9)):
        patient_deactivate(patient=left)  # before the cycle: not billable in it
    with at(SUBSCRIBED):
        subscription_create(office=office, plan_code="basic")
    with at(local(2026, 3, 20, 9)):
        patient_activate(patient=joined)
    draft = draft_of(office)
    # What the lock normally prevents: lines lost from the draft, stray lines put on it.
    LineItem.objects.filter(invoice=draft, patient__in=[lost, joined]).delete()
    for stray in (never, left):
        LineItem.objects.create(
            invoice=draft,
            kind=LineKind.RECURRING,
            patient=stray,
            patient_ref=stray.billing_ref,
            description=f"Active patient {stray.billing_ref}",
            quantity=1,
            unit_amount_cents=450,
            amount_cents=450,
        )
    assert set(patient_lines(draft)) == {stays.pk, never.pk, left.pk}

    with at(AFTER_FIRST_END):
        billing_run()

    march = Invoice.objects.get(pk=draft.pk)
    assert march.status == InvoiceStatus.OPEN
    assert patient_lines(march) == {
        stays.pk: LineKind.RECURRING,
        lost.pk: LineKind.RECURRING,
        joined.pk: LineKind.ACTIVATION,
    }
    assert march.total_cents == 3 * 450
    assert {line.description for line in march.lines.all()} == {
        f"Active patient {stays.billing_ref}",
        f"Active patient {lost.billing_ref}",
        f"Patient activated during the period {joined.billing_ref}",
    }


def test_it_words_patient_lines_with_their_billing_reference_only() -> None:
    PlanFactory(code="basic", per_patient_cents=450, minimum_cents=0)
    office, (early,) = subscribed("basic")
    late = PatientFactory(office=office)
    with at(local(2026, 3, 20, 9)):
        patient_activate(patient=late)

    def wording(invoice: Invoice) -> dict[int | None, str]:
        return {line.patient_id: line.description for line in invoice.lines.all()}

    march = draft_of(office)
    assert wording(march) == {
        early.pk: f"Active patient {early.billing_ref}",  # opened with the draft (set-based insert)
        late.pk: f"Patient activated during the period {late.billing_ref}",  # added at activation
    }
    with at(AFTER_FIRST_END):
        billing_run()
    april = draft_of(office)
    assert wording(april) == {
        early.pk: f"Active patient {early.billing_ref}",
        late.pk: f"Active patient {late.billing_ref}",
    }
    assert PATIENT_LINE_PREFIX == {
        LineKind.RECURRING: "Active patient ",
        LineKind.ACTIVATION: "Patient activated during the period ",
    }


# --- §6 Invoices -------------------------------------------------------------------------


def test_it_gives_a_rolled_back_finalizations_number_back() -> None:
    """A refused plan change first caught the office up (finalizing its ended cycle, which
    took a number), then failed: the rollback returns the number, so the year stays gapless."""
    PlanFactory(code="basic", per_patient_cents=450)
    office, _ = subscribed("basic")
    other = OfficeFactory()
    prefix = settings.INVOICE_NUMBER_PREFIX
    lines = [{"description": "Data migration", "amount_cents": 30000}]
    with at(local(2026, 4, 1, 9)):
        first = invoice_create_one_off(office=other, lines=lines)
    assert first.number == f"{prefix}-2026-000001"

    with at(local(2026, 4, 12, 9)), pytest.raises(ApplicationError, match="Unknown plan"):
        subscription_change_plan(office=office, plan_code="no-such-plan")

    assert InvoiceNumberSequence.objects.get(year=2026).last_value == 1
    assert draft_of(office).number is None  # the catch-up rolled back with the refusal
    with at(local(2026, 4, 12, 10)):
        billing_run()
        third = invoice_create_one_off(office=other, lines=lines)
    assert cycles(office)[0].number == f"{prefix}-2026-000002"
    assert third.number == f"{prefix}-2026-000003"


def test_it_records_a_failing_office_and_bills_the_others_then_retries_it_next_run() -> None:
    """§6: an office whose step fails is recorded on the run (`BillingRunError`, audited),
    the others go on, the next run retries it. The cause is real data: the office row holds
    a zone name this host's time-zone database does not know (written around the service,
    e.g. by a raw import), so opening its next cycle raises an ordinary ApplicationError —
    after its ended cycle was finalized, which rolls back with the step."""
    PlanFactory(code="basic", per_patient_cents=450)
    offices = [subscribed("basic", name=name)[0] for name in ("Alder Clinic", "Birch Clinic", "Cedar Clinic")]
    first, failing, last = offices
    Office.objects.filter(pk=failing.pk).update(timezone="Mars/Olympus_Mons")

    with at(AFTER_FIRST_END):
        run = billing_run()

    assert (run.status, run.offices_due, run.offices_done, run.error_count) == (BillingRunStatus.FINISHED, 3, 2, 1)
    (error,) = BillingRunError.objects.filter(run=run)
    assert error.office_id == failing.pk
    assert error.message.startswith("ApplicationError: Unknown time zone 'Mars/Olympus_Mons'")
    (audited,) = AuditEvent.objects.filter(action="billing_run.office_failed")
    assert (audited.target_id, audited.office_id, audited.outcome, audited.reason) == (
        str(run.pk),
        failing.pk,
        Outcome.FAILURE,
        "ApplicationError",
    )
    assert AuditEvent.objects.get(action="billing_run.finished", target_id=str(run.pk)).outcome == Outcome.FAILURE
    for office in (first, last):
        assert [c.status for c in cycles(office)] == [InvoiceStatus.OPEN, InvoiceStatus.DRAFT]
    assert [(c.status, c.number) for c in cycles(failing)] == [(InvoiceStatus.DRAFT, None)]  # rolled back

    Office.objects.filter(pk=failing.pk).update(timezone="America/Chicago")  # the data is repaired
    with at(AFTER_FIRST_END + timedelta(hours=1)):
        retry = billing_run()

    assert (retry.offices_due, retry.offices_done, retry.error_count, retry.invoices_finalized) == (1, 1, 0, 1)
    assert [c.status for c in cycles(failing)] == [InvoiceStatus.OPEN, InvoiceStatus.DRAFT]
    assert cycles(failing)[1].period_start == FIRST_END
    numbers = sorted(Invoice.objects.exclude(number=None).values_list("number", flat=True))
    assert [int(n.rsplit("-", 1)[1]) for n in numbers] == [1, 2, 3]  # the failed step's number came back


# --- §8 Subscription lifecycle ---------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED],
)
def test_it_refuses_to_subscribe_an_office_that_is_still_subscribed(status: str) -> None:
    PlanFactory(code="basic")
    PlanFactory(code="trial14", trial_days=14)
    office, _ = subscribed("trial14" if status == SubscriptionStatus.TRIALING else "basic")
    if status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED):
        Office.objects.filter(pk=office.pk).update(subscription_status=status)  # dunning's outcome
    admin = member(office, Role.OFFICE_BILLING_ADMIN, "billing-admin")
    before = (list(Office.objects.filter(pk=office.pk).values()), PlanChange.objects.count(), Invoice.objects.count())

    with at(local(2026, 3, 12, 9)):
        with pytest.raises(ConflictError) as exc:
            subscription_create(office=office, plan_code="basic")
        response = api(admin, "post", f"offices/{office.pk}/subscription/", {"plan": "basic"})

    assert exc.value.status_code == 409 and "already has a subscription" in exc.value.message
    assert response.status_code == 409 and "already has a subscription" in response.json()["message"]
    assert set(response.json()) == {"message", "extra"}
    assert (
        list(Office.objects.filter(pk=office.pk).values()),
        PlanChange.objects.count(),
        Invoice.objects.count(),
    ) == (before)


def test_it_refuses_to_ask_for_the_plan_already_in_force_from_the_next_cycle() -> None:
    PlanFactory(code="basic")
    PlanFactory(code="premium", per_patient_cents=600)
    office, _ = subscribed("basic")
    with at(local(2026, 3, 12, 9)), pytest.raises(ConflictError) as current:
        subscription_change_plan(office=office, plan_code="basic")
    with at(local(2026, 3, 13, 9)):
        subscription_change_plan(office=office, plan_code="premium")
    with at(local(2026, 3, 14, 9)), pytest.raises(ConflictError) as pending:
        subscription_change_plan(office=office, plan_code="premium")

    for refused, code in ((current, "basic"), (pending, "premium")):
        assert refused.value.status_code == 409
        assert f"already on plan '{code}' from the next cycle" in refused.value.message
    assert PlanChange.objects.filter(office=office, kind=PlanChangeKind.CHANGE).count() == 1
    assert reload(office).pending_plan.code == "premium"


def test_it_withdraws_a_pending_plan_change_when_the_current_plan_is_asked_for() -> None:
    PlanFactory(code="basic", per_patient_cents=450)
    PlanFactory(code="premium", per_patient_cents=600)
    office, _ = subscribed("basic")
    with at(local(2026, 3, 13, 9)):
        subscription_change_plan(office=office, plan_code="premium")
    assert subscription_view(reload(office)).pending_plan == "premium"

    with at(local(2026, 3, 20, 9)):
        subscription_change_plan(office=office, plan_code="basic")

    office = reload(office)
    assert office.pending_plan is None and subscription_view(office).pending_plan is None
    assert [c.plan.code for c in PlanChange.objects.filter(office=office).order_by("requested_at")] == [
        "basic",
        "premium",
        "basic",
    ]
    with at(AFTER_FIRST_END):
        billing_run()
    april = draft_of(office)
    assert april.plan.code == "basic"
    assert {line.unit_amount_cents for line in april.lines.filter(patient__isnull=False)} == {450}
    assert reload(office).current_plan.code == "basic"


def test_it_refuses_to_withdraw_a_cancellation_that_is_not_pending() -> None:
    PlanFactory(code="basic")
    office, _ = subscribed("basic")
    admin = member(office, Role.OFFICE_BILLING_ADMIN, "billing-admin")
    with at(local(2026, 3, 12, 9)):
        with pytest.raises(ConflictError) as exc:
            subscription_resume(office=office)
        response = api(admin, "patch", f"offices/{office.pk}/subscription/", {"cancel_at_period_end": False})

    assert exc.value.status_code == 409 and "no pending cancellation" in exc.value.message
    assert response.status_code == 409 and "no pending cancellation" in response.json()["message"]
    assert not AuditEvent.objects.filter(action="subscription.cancel_withdrawn").exists()
    assert reload(office).cancel_at_period_end is False


# --- §9 HIPAA and the audit trail --------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "DOB 03/07/1984",
        "born 03-07-1984",
        "3.7.1984",
        "03.07.84",
        "3/7/84",
        "03 07 1984",
        "03_07_1984",
        "19840703",
        "03071984",
    ],
)
def test_it_refuses_a_day_first_or_compact_birth_date(text: str) -> None:
    office = OfficeFactory(name="Harbor Clinic")
    PatientFactory(office=office, date_of_birth=datetime(1984, 7, 3).date())
    with pytest.raises(PhiRefused) as exc:
        phi_check(office=office, fields={"description": text})
    assert exc.value.kind == "birth_date" and exc.value.extra == {"field": "description", "kind": "birth_date"}


def test_it_seals_the_trail_every_minute_from_beat() -> None:
    # The schedule as beat reads it from the settings (the database scheduler copies these
    # entries into its table at start; Celery's own scheduler interprets them the same way).
    scheduler = Scheduler(app=app)
    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    entry = scheduler.schedule["audit-seal"]
    assert entry.task == "audit.tasks.audit_seal_task" and entry.task in app.tasks
    assert entry.schedule.run_every == timedelta(minutes=1)

    # Entries whose after-commit seal never ran (this test's transaction never commits).
    office = OfficeFactory()
    with at(local(2026, 3, 12, 9)):
        patient_activate(patient=PatientFactory(office=office))
    unsealed = AuditEvent.objects.filter(seq__isnull=True)
    assert unsealed.exists()

    sealed = app.tasks[entry.task].apply().get()

    assert sealed > 0 and not AuditEvent.objects.filter(seq__isnull=True).exists()
    report = verify_chain()
    assert report.broken is None and report.unsealed == 0 and report.sealed == AuditEvent.objects.count()


# --- §10 Interface contract ------------------------------------------------------------------

ENVIRONMENT = {
    "DATABASE_URL": "postgres://billing@db.internal.example:5433/billing_env",
    "CELERY_BROKER_URL": "redis://broker.internal.example:6390/3",
    "STRIPE_WEBHOOK_SECRET": "whsec_from_the_environment",
    "STRIPE_WEBHOOK_SECRET_NEXT": "whsec_next_from_the_environment",
    "STRIPE_API_BASE": "http://127.0.0.1:12111",
    "INVOICE_NUMBER_PREFIX": "ENVX",
    "BILLING_GRACE_DAYS": "21",
    "BILLING_DEFAULT_TIMEZONE": "Europe/Berlin",
}
READ_SETTINGS = """
import json
from django.conf import settings as s
db = s.DATABASES["default"]
print(json.dumps({
    "db": [db["ENGINE"], db["HOST"], db["PORT"], db["NAME"]],
    "CELERY_BROKER_URL": s.CELERY_BROKER_URL,
    "STRIPE_WEBHOOK_SECRET": s.STRIPE_WEBHOOK_SECRET,
    "STRIPE_WEBHOOK_SECRET_NEXT": s.STRIPE_WEBHOOK_SECRET_NEXT,
    "STRIPE_API_BASE": s.STRIPE_API_BASE,
    "INVOICE_NUMBER_PREFIX": s.INVOICE_NUMBER_PREFIX,
    "BILLING_GRACE_DAYS": s.BILLING_GRACE_DAYS,
    "BILLING_DEFAULT_TIMEZONE": s.BILLING_DEFAULT_TIMEZONE,
}))
"""


def _settings_in_a_process(**env: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    done = subprocess.run(
        [sys.executable, "-c", READ_SETTINGS],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings.base", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_it_reads_its_settings_from_the_environment() -> None:
    found = _settings_in_a_process(**ENVIRONMENT)
    assert found["db"] == ["django.db.backends.postgresql", "db.internal.example", 5433, "billing_env"]
    assert {k: str(v) for k, v in found.items() if k != "db"} == {
        k: v for k, v in ENVIRONMENT.items() if k != "DATABASE_URL"
    }
    defaults = _settings_in_a_process()  # unset: the documented development defaults
    assert defaults["db"][0] == "django.db.backends.sqlite3"
    assert (defaults["INVOICE_NUMBER_PREFIX"], defaults["BILLING_GRACE_DAYS"]) == ("INV", 14)
    assert (defaults["BILLING_DEFAULT_TIMEZONE"], defaults["CELERY_BROKER_URL"]) == (
        "America/New_York",
        "filesystem://",
    )


COMMAND_AT = datetime(2026, 4, 10, 6, tzinfo=ZoneInfo("UTC"))  # after 00:00 Chicago


def test_it_bills_every_office_given_by_a_repeated_office_option() -> None:
    professional_plan()
    maple, harbor, cedar = (
        subscribed("professional", name=n)[0] for n in ("Maple Clinic", "Harbor Clinic", "Cedar Clinic")
    )
    out = io.StringIO()
    with at(COMMAND_AT):
        call_command(
            "run_billing_cycle", "--office", str(maple.pk), "--office", str(cedar.pk), "--no-progress", stdout=out
        )

    run = BillingRun.objects.get()
    assert run.office_filter == [maple.pk, cedar.pk]
    assert (run.offices_due, run.invoices_finalized) == (2, 2)
    for office in (maple, cedar):
        assert [c.status for c in cycles(office)] == [InvoiceStatus.OPEN, InvoiceStatus.DRAFT]
        assert office.name in out.getvalue()
    assert [c.status for c in cycles(harbor)] == [InvoiceStatus.DRAFT]
    assert "Harbor Clinic" not in out.getvalue()


def test_it_prints_a_progress_bar_over_the_due_offices(capsys: pytest.CaptureFixture[str]) -> None:
    professional_plan()
    for name in ("Maple Clinic", "Harbor Clinic"):
        subscribed("professional", name=name)
    with at(COMMAND_AT):
        call_command("run_billing_cycle", stdout=io.StringIO())
    bar = capsys.readouterr().err
    assert "billing:" in bar and "0/2" in bar and "office" in bar

    with at(COMMAND_AT + timedelta(minutes=5)):
        call_command("run_billing_cycle", "--no-progress", stdout=io.StringIO())
    assert "billing:" not in capsys.readouterr().err
