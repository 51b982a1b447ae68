"""`manage.py seed_demo`: four months of demo history for `make run`, built through the
services with the clock moved back, never by writing rows around them.

Six offices of one company, in five US time zones, on three plans, two collection methods.
The history starts four months and twenty days ago and walks forward instant by instant
(time-machine moves this process's clock; localstripe's `/_config/clock` moves the fake
Stripe's to the same instant): patients created, activated and deactivated on various
days (`patient_activate` / `patient_deactivate`), subscriptions (`subscription_create`,
one with a trial), a billing run (`billing_run`, the run_billing_cycle command's service)
at every monthly boundary and a dunning pass (`dunning_run`) every day. Each finalized
invoice is pushed to localstripe by the push service (`invoice_push`, what the Celery
task runs, called here in-process so it happens at the history's instant). Then:

- card offices (a `pm_card_visa` default payment method): Stripe's automatic collection
  pays, and its real `invoice.paid` events are delivered to our webhook endpoint,
  signed with STRIPE_WEBHOOK_SECRET as Stripe signs them;
- Denver replaces its card with `pm_card_chargeCustomerFail` (attaches, every charge
  declines) before the last run: Stripe's automatic attempt fails, its
  `invoice.payment_failed` goes through the same endpoint → past due, `payment.failed`
  audited, and 14 days later (BILLING_GRACE_DAYS) the dunning pass suspends the office;
- `send_invoice` offices pay by wire or cheque, recorded by the out-of-band payment
  service (`invoice_mark_paid_out_of_band`); Phoenix pays one invoice late (past due,
  then active again) and has not paid the last one (past due now); Chicago's last one is
  open and not yet due;
- an operator voids one Seattle invoice with a reason (`invoice_void`), and bills a
  one-off onboarding workshop to Manhattan (`invoice_create_one_off`); the professional
  plan's setup fee is billed by the engine at subscription.

Idempotent: once the history is there (its closing run exists) a second run creates
nothing. Every run gives the demo users new random passwords and prints them. A history
left half-made (a crash) is refused with what to delete. Refuses production settings (it
creates a superuser with a printed password), needs time-machine (a dev dependency, which
`make run` installs; imported only here, after that check) and a localstripe with our
clock at STRIPE_API_BASE (`make run` starts it first). Patients are fake but handled as
PHI: nothing here prints or logs their names, birth dates or MRNs."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import random
import secrets
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from django.test import RequestFactory
from django.utils import timezone
from guardian.shortcuts import get_perms

from audit.services import deferred_sealing
from billing import seam
from billing.dunning import dunning_run
from billing.engine.cycles import add_months_clamped, local_midnight
from billing.engine.run import billing_run
from billing.models import BillingRun, Invoice, InvoiceKind
from billing.services import (
    invoice_create_one_off,
    invoice_void,
    patient_activate,
    patient_deactivate,
    plan_create,
    subscription_create,
)
from billing.stripe.events import invoice_mark_paid_out_of_band
from billing.stripe.gateway import Gateway
from billing.stripe.push import customer_ensure, invoice_push, invoice_void_sync
from billing.stripe.webhooks import stripe_webhook
from offices.models import COMPLIANCE_AUDITOR_GROUP, CollectionMethod, Company, Office, Role
from offices.services import office_create, office_member_grant
from patients.models import Patient
from patients.services import patient_create


@dataclass(frozen=True)
class PlanSpec:
    code: str
    name: str
    per_patient_cents: int
    minimum_cents: int = 0
    setup_fee_cents: int = 0
    trial_days: int = 0


@dataclass(frozen=True)
class OfficeSpec:
    slug: str  # usernames are `<slug>-billing` and `<slug>-staff`
    name: str
    timezone: str
    plan: str
    patients: int
    collection: str = CollectionMethod.CHARGE_AUTOMATICALLY
    days_until_due: int = 30
    card: str = ""  # localstripe test payment method set as the customer's default
    pays: str = ""  # out-of-band method for send_invoice offices: wire or cheque
    pays_after_days: int = 0


PLANS = (
    PlanSpec("starter", "Starter", per_patient_cents=300),
    PlanSpec("professional", "Professional", per_patient_cents=450, minimum_cents=15000, setup_fee_cents=50000),
    PlanSpec("enterprise", "Enterprise", per_patient_cents=350, minimum_cents=100000, trial_days=14),
)
COMPANY_NAME = "Demo Health Partners"
VISA = "pm_card_visa"
DECLINING_CARD = "pm_card_chargeCustomerFail"  # 4000000000000341: attaches, every charge is declined
OFFICES = (
    OfficeSpec("manhattan", "Demo Manhattan Clinic", "America/New_York", "professional", 40, card=VISA),
    OfficeSpec(
        "chicago",
        "Demo Chicago Clinic",
        "America/Chicago",
        "starter",
        30,
        collection=CollectionMethod.SEND_INVOICE,
        days_until_due=30,
        pays="wire",
        pays_after_days=25,
    ),
    OfficeSpec("los-angeles", "Demo Los Angeles Clinic", "America/Los_Angeles", "enterprise", 45, card=VISA),
    OfficeSpec("denver", "Demo Denver Clinic", "America/Denver", "starter", 25, card=VISA),
    OfficeSpec(
        "phoenix",
        "Demo Phoenix Clinic",
        "America/Phoenix",
        "professional",
        30,
        collection=CollectionMethod.SEND_INVOICE,
        days_until_due=15,
        pays="cheque",
        pays_after_days=10,
    ),
    OfficeSpec(
        "seattle",
        "Demo Seattle Clinic",
        "America/Los_Angeles",
        "starter",
        20,
        collection=CollectionMethod.SEND_INVOICE,
        days_until_due=30,
        pays="wire",
        pays_after_days=14,
    ),
)
TRIAL_OFFICE = "los-angeles"  # subscribes trial_days before the others, so all share one anchor day
FAILING_OFFICE = "denver"  # its card is replaced by a declining one before the last run
LATE_OFFICE = "phoenix"  # pays the 4th cycle late, leaves the 5th unpaid
VOID_OFFICE = "seattle"  # its 3rd cycle invoice is voided by an operator
VOID_REASON = "Cycle waived by finance: the clinic was closed for renovation (demo)"
ONE_OFF_OFFICE = "manhattan"
ONE_OFF_LINES = [
    {"description": "On-site onboarding workshop for the front desk (demo)", "amount_cents": 25000},
    {"description": "Data migration from the previous billing system (demo)", "amount_cents": 12500, "quantity": 2},
]
OPERATOR = "admin"
AUDITOR = "auditor"
MONTHS = 4  # full cycles of history; the last boundary is LAST_BOUNDARY_DAYS_AGO
LAST_BOUNDARY_DAYS_AGO = 20  # > BILLING_GRACE_DAYS (14): Denver's failed payment has suspended it
RUN_HOUR_UTC = 12  # the boundary runs: after midnight in every US zone
DUNNING_HOUR_UTC = 13
COLLECTION_TIMEOUT = 15.0  # seconds to wait for localstripe's automatic collection (~1 s)
WEBHOOK_TYPES = ("invoice.paid", "invoice.payment_failed")
RUNS_IN_HISTORY = MONTHS + 2  # one per boundary B0…B_MONTHS, then the closing run at the real time


@dataclass
class Login:
    username: str
    role: str
    offices: str
    password: str = ""


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    logins: list[Login] = field(default_factory=list)


@dataclass(order=True)
class Step:
    at: datetime
    order: int
    label: str = field(compare=False)
    run: Callable[[], None] = field(compare=False)


@dataclass
class StripeWork:
    """What the services asked of Stripe during one step (billing.seam), done in-process
    after it at the step's instant instead of by Celery tasks at the real time."""

    customers: list[int] = field(default_factory=list)
    pushes: list[int] = field(default_factory=list)
    voids: list[int] = field(default_factory=list)


_PASSWORD_ALPHABET = string.ascii_letters + string.digits  # one double-click selects it


def _new_password() -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(16))


@contextlib.contextmanager
def _stripe_work_in_process(work: StripeWork) -> Iterator[None]:
    # billing.seam keeps one handler of each kind; the previous ones come back afterwards.
    saved = (seam._handler, seam._void_handler, seam._customer_handler)
    seam.register_push_handler(work.pushes.append)
    seam.register_void_handler(work.voids.append)
    seam.register_customer_handler(work.customers.append)
    try:
        yield
    finally:
        seam.register_push_handler(saved[0])
        seam.register_void_handler(saved[1])
        seam.register_customer_handler(saved[2])


class Localstripe:
    """The few localstripe calls that are no part of our Stripe integration: its clock,
    the test cards a person would enter on Stripe's hosted page, and its event list."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {settings.STRIPE_SECRET_KEY}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"{self.base}{path}", timeout=10, **kwargs)
        if response.status_code >= 400:
            raise CommandError(f"localstripe {method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def clock_set(self, instant: datetime | None) -> None:
        self._call("POST", "/_config/clock", data={"frozen_time": str(int(instant.timestamp()))} if instant else {})

    def has_customers(self) -> bool:
        return bool(self._call("GET", "/v1/customers", params={"limit": 1})["data"])

    def card_set_default(self, *, customer_id: str, card: str) -> None:
        method = self._call("POST", f"/v1/payment_methods/{card}/attach", data={"customer": customer_id})
        self._call(
            "POST",
            f"/v1/customers/{customer_id}",
            data={"invoice_settings[default_payment_method]": method["id"]},
        )

    def events_about(self, stripe_invoice_id: str, since: int) -> list[dict[str, Any]]:
        params: list[tuple[str, str]] = [("limit", "100"), ("created[gte]", str(since))]
        params += [("types[]", t) for t in WEBHOOK_TYPES]
        events = self._call("GET", "/v1/events", params=params)["data"]
        return sorted(
            (e for e in events if e["data"]["object"].get("id") == stripe_invoice_id),
            key=lambda e: (e["created"], e["id"]),
        )


def _stripe_base() -> str:
    base = str(settings.STRIPE_API_BASE or "")
    parts = urlsplit(base)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise CommandError(
            "seed_demo builds its history against localstripe on this machine (STRIPE_API_BASE="
            f"{base or '<empty: real Stripe>'}); `make run` starts one and points STRIPE_API_BASE at it."
        )
    return base


class Command(BaseCommand):
    help = "Build ~4 months of demo billing history through the services (idempotent; prints fresh logins)."

    def handle(self, *args: Any, **options: Any) -> None:
        if str(getattr(settings, "SETTINGS_MODULE", "")).endswith(".production"):
            raise CommandError("seed_demo creates a superuser with a printed password: not with production settings.")
        try:
            import time_machine  # a dev dependency (pyproject [dev]); production never gets this far
        except ImportError as exc:
            raise CommandError(
                "seed_demo needs the development dependencies (time-machine): pip install -e '.[dev]'"
            ) from exc
        started = time.monotonic()
        report = Report()
        company = Company.objects.filter(name=COMPANY_NAME).first()
        if company is None:
            stripe = Localstripe(_stripe_base())
            if not settings.STRIPE_WEBHOOK_SECRET:
                raise CommandError("seed_demo delivers Stripe's events to our webhook: set STRIPE_WEBHOOK_SECRET.")
            try:
                stripe.clock_set(None)
            except requests.RequestException as exc:
                raise CommandError(f"localstripe does not answer at {stripe.base}: {exc}") from exc
            if stripe.has_customers():
                raise CommandError(
                    "localstripe already holds customers of an earlier database; a new demo needs both fresh: "
                    "delete var/localstripe/ (or start it with --from-scratch) together with the database."
                )
            try:
                History(self, report, stripe, time_machine).build()
            finally:
                stripe.clock_set(None)
        elif BillingRun.objects.filter(trigger="seed_demo").count() < RUNS_IN_HISTORY:
            raise CommandError(
                f"The demo company '{COMPANY_NAME}' exists but its history is incomplete (an earlier seed_demo "
                "stopped half-way, or came from an older version): delete the database and var/localstripe/, "
                "then run seed_demo again."
            )
        for username, role, offices in _logins():
            user = get_user_model().objects.get(username=username)
            password = _new_password()
            user.set_password(password)  # every run: the printed password is the one that works
            user.save(update_fields=["password"])
            report.logins.append(Login(username=username, role=role, offices=offices, password=password))
        self._print(report, time.monotonic() - started)

    # --- output -------------------------------------------------------------------------

    def _print(self, report: Report, seconds: float) -> None:
        out = self.stdout
        if report.created:
            out.write(self.style.SUCCESS(f"Demo data created in {seconds:.0f} s:"))
            for item in report.created:
                out.write(f"  - {item}")
        else:
            out.write(self.style.SUCCESS("Demo data already present: nothing created."))
        invoices = {
            row["office_id"]: row["n"]
            for row in Invoice.objects.filter(office__company__name=COMPANY_NAME)
            .values("office_id")
            .annotate(n=Count("pk"))
            .order_by()
        }
        for spec in OFFICES:
            office = Office.objects.select_related("current_plan").get(company__name=COMPANY_NAME, name=spec.name)
            out.write(
                f"  {office.name} [{office.timezone}]: {office.subscription_status}, "
                f"plan {office.current_plan.code if office.current_plan else '-'}, {office.collection_method}, "
                f"{Patient.objects.filter(office=office).count()} patients, {invoices.get(office.pk, 0)} invoices"
            )
        out.write("")
        out.write(self.style.MIGRATE_HEADING("Demo logins (passwords are new on every run of seed_demo):"))
        rows = [("username", "role", "office(s)", "password")]
        rows += [(lg.username, lg.role, lg.offices, lg.password) for lg in report.logins]
        widths = [max(len(row[col]) for row in rows) for col in range(4)]
        for n, row in enumerate(rows):
            out.write("  " + "  ".join(cell.ljust(widths[col]) for col, cell in enumerate(row)).rstrip())
            if n == 0:
                out.write("  " + "  ".join("-" * w for w in widths))


def _logins() -> list[tuple[str, str, str]]:
    rows = [(OPERATOR, "operator (superuser)", "all")]
    for spec in OFFICES:
        rows.append((f"{spec.slug}-billing", str(Role.OFFICE_BILLING_ADMIN), spec.name))
        rows.append((f"{spec.slug}-staff", str(Role.OFFICE_STAFF), spec.name))
    rows.append((AUDITOR, COMPLIANCE_AUDITOR_GROUP, "all (audit trail)"))
    return rows


# --- the history ----------------------------------------------------------------------


def _at(day: date, hour: int, minute: int, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).astimezone(UTC)


class History:
    """The timeline: a list of steps, sorted, run one by one with both clocks at the step's instant."""

    def __init__(self, command: Command, report: Report, stripe: Localstripe, time_machine: Any) -> None:
        self.command = command
        self.report = report
        self.stripe = stripe
        self.time_machine = time_machine
        self.now = timezone.now()
        self.vendor_tz = ZoneInfo(str(settings.BILLING_DEFAULT_TIMEZONE))
        last = self.now.astimezone(self.vendor_tz).date() - timedelta(days=LAST_BOUNDARY_DAYS_AGO)
        last = last.replace(day=min(last.day, 28))  # the same day in every month: no clamping
        # B0 (subscriptions) … B_MONTHS (the last boundary), local dates on the anchor day.
        self.boundaries = [add_months_clamped(last, k - MONTHS) for k in range(MONTHS + 1)]
        self.steps: list[Step] = []
        self.work = StripeWork()
        self.gateway: Gateway | None = None
        self.offices: dict[str, Office] = {}
        self.users: dict[str, Any] = {}
        self.cards: dict[str, str] = {}  # slug → the card set as default in localstripe
        self.webhooks = RequestFactory()
        self.stripe_clock_due = False

    def _stripe_clock(self) -> None:
        """localstripe's clock to this process's (moved) time, before the step's first Stripe call."""
        if self.stripe_clock_due:
            self.stripe.clock_set(timezone.now())
            self.stripe_clock_due = False

    def step(self, at: datetime, label: str, run: Callable[[], None], order: int = 5) -> None:
        self.steps.append(Step(at=at, order=order, label=label, run=run))

    def build(self) -> None:
        start = _at(self.boundaries[0] - timedelta(days=30), 9, 0, self.vendor_tz)
        self.step(start, "plans, company, offices and users", self._setup, order=0)
        for spec in OFFICES:
            self._plan_office(spec)
        for k, day in enumerate(self.boundaries):
            run_at = datetime(day.year, day.month, day.day, RUN_HOUR_UTC, tzinfo=UTC)
            self.step(run_at, f"billing run at boundary {k}", self._billing_run, order=1)
        day = self.boundaries[0]
        while (moment := datetime(day.year, day.month, day.day, DUNNING_HOUR_UTC, tzinfo=UTC)) < self.now:
            self.step(moment, "dunning pass", self._dunning, order=2)
            day += timedelta(days=1)
        self.steps.sort()
        if self.steps[-1].at >= self.now:
            raise CommandError(f"internal: a demo step is in the future ({self.steps[-1].label})")

        with self.time_machine.travel(self.steps[0].at, tick=True) as traveller, _stripe_work_in_process(self.work):
            self.gateway = Gateway()
            # One seal of the audit chain at the end, as a billing run does, rather than one
            # per commit (the entries are chained in the order they were written either way).
            with deferred_sealing():
                for step in self.steps:
                    traveller.move_to(step.at)
                    self.stripe_clock_due = True  # set lazily: most steps never reach Stripe
                    step.run()
                    self._stripe_work(since=int(step.at.timestamp()) - 1)
        # Back at the real time: the hourly passes of today.
        with _stripe_work_in_process(self.work):
            dunning_run()
            run = billing_run(trigger="seed_demo")
            self._stripe_work(since=int(self.now.timestamp()) - 1)
        self.report.created.append(
            f"{BillingRun.objects.filter(trigger='seed_demo').count()} billing runs from "
            f"{self.boundaries[0]:%Y-%m-%d} to today (the last one now: {run.offices_due} office(s) due)"
        )

    # --- steps ------------------------------------------------------------------------

    def _setup(self) -> None:
        admin = self._user(OPERATOR, operator=True)
        for plan_spec in PLANS:
            plan_create(
                code=plan_spec.code,
                name=plan_spec.name,
                per_patient_cents=plan_spec.per_patient_cents,
                minimum_cents=plan_spec.minimum_cents,
                setup_fee_cents=plan_spec.setup_fee_cents,
                trial_days=plan_spec.trial_days,
                actor=admin,
            )
        # Companies carry no billing state and have no service: a plain row.
        company = Company.objects.create(name=COMPANY_NAME)
        for spec in OFFICES:
            office = office_create(
                name=spec.name,
                billing_email=f"billing@{spec.slug}.demo.example",
                timezone=spec.timezone,
                company=company,
                collection_method=spec.collection,
                days_until_due=spec.days_until_due,
                actor=admin,
            )
            self.offices[spec.slug] = office
            for role, suffix in ((Role.OFFICE_BILLING_ADMIN, "billing"), (Role.OFFICE_STAFF, "staff")):
                user = self._user(f"{spec.slug}-{suffix}")
                if role not in get_perms(user, office):
                    office_member_grant(office=office, user=user, role=role, actor=admin)
        auditor = self._user(AUDITOR)
        group, _ = Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)
        auditor.groups.add(group)
        self.report.created.append(
            f"company {COMPANY_NAME}: {len(OFFICES)} offices, {len(PLANS)} plans, {len(_logins())} users"
        )

    def _user(self, username: str, *, operator: bool = False) -> Any:
        user = get_user_model()(username=username, email=f"{username}@demo.example", is_active=True)
        if operator and isinstance(user, AbstractUser):
            user.is_staff = user.is_superuser = True
        user.set_unusable_password()  # a printed password is set at the end of every run
        user.save()
        self.users[username] = user
        return user

    def _billing_run(self) -> None:
        billing_run(trigger="seed_demo")

    def _dunning(self) -> None:
        dunning_run()

    def _plan_office(self, spec: OfficeSpec) -> None:
        """This office's steps: patients, subscription, payments and its own story."""
        tz = ZoneInfo(spec.timezone)
        rng = random.Random(spec.slug)  # noqa: S311 - demo data, not security
        b = self.boundaries
        plan = next(p for p in PLANS if p.code == spec.plan)
        sub_day = b[0] - timedelta(days=plan.trial_days) if spec.slug == TRIAL_OFFICE else b[0]
        subscribed_at = _at(sub_day, 15, 0, tz)
        self.step(_at(sub_day - timedelta(days=10), 10, 0, tz), f"{spec.slug}: patients", lambda: self._patients(spec))
        self.step(subscribed_at, f"{spec.slug}: subscribes", lambda: self._subscribe(spec))

        # Patient histories: onboarding before the subscription, then activations and
        # deactivations on various days; every tenth patient is never activated.
        last_activation = self.now - timedelta(days=10)  # before Denver's suspension refuses them
        for i in range(spec.patients):
            if i % 10 == 9:
                continue
            if i < spec.patients * 6 // 10:
                activated = subscribed_at - timedelta(days=rng.randint(1, 8), hours=rng.randint(0, 5))
            else:
                activated = subscribed_at + timedelta(days=rng.randint(2, 120), hours=rng.randint(0, 6))
                if activated > last_activation:
                    activated = subscribed_at + timedelta(days=rng.randint(2, 60), hours=rng.randint(0, 6))
            activated = self._business_hours(activated, tz, rng)
            self.step(activated, f"{spec.slug}: activation", partial(self._activate, spec, i))
            if rng.random() < 0.18:  # left the practice
                gone = self._business_hours(activated + timedelta(days=rng.randint(5, 70)), tz, rng)
                if gone < self.now - timedelta(days=1):
                    self.step(gone, f"{spec.slug}: deactivation", partial(self._deactivate, spec, i))
                    back = self._business_hours(gone + timedelta(days=rng.randint(10, 30)), tz, rng)
                    if rng.random() < 0.35 and back < last_activation:  # came back
                        self.step(back, f"{spec.slug}: reactivation", partial(self._activate, spec, i))

        if spec.pays:
            if plan.setup_fee_cents:
                paid = _at(b[0] + timedelta(days=spec.pays_after_days), 11, 30, tz)
                self.step(paid, f"{spec.slug}: pays the setup fee", lambda: self._pay_setup_fee(spec))
            for k in range(1, MONTHS + 1):
                delay = spec.pays_after_days
                if spec.slug == LATE_OFFICE and k == MONTHS - 1:
                    delay = spec.days_until_due + 7  # past due for a week, within the grace period
                if spec.slug == LATE_OFFICE and k == MONTHS:
                    continue  # not paid: past due at the end
                if spec.slug == VOID_OFFICE and k == 2:
                    continue  # voided instead
                paid = _at(b[k] + timedelta(days=delay), 11, 30, tz)
                if paid < self.now - timedelta(hours=12):
                    self.step(paid, f"{spec.slug}: pays cycle {k}", partial(self._pay_cycle, spec, k))
        if spec.slug == FAILING_OFFICE:
            swap = _at(b[MONTHS] - timedelta(days=4), 16, 0, tz)
            self.step(swap, f"{spec.slug}: new card (it declines)", lambda: self._set_card(spec, DECLINING_CARD))
        if spec.slug == VOID_OFFICE:
            self.step(_at(b[2] + timedelta(days=4), 14, 0, tz), f"{spec.slug}: void", lambda: self._void(spec))
        if spec.slug == ONE_OFF_OFFICE:
            self.step(_at(b[1] + timedelta(days=9), 14, 0, tz), f"{spec.slug}: one-off", lambda: self._one_off(spec))

    @staticmethod
    def _business_hours(instant: datetime, tz: ZoneInfo, rng: random.Random) -> datetime:
        """The same local day at 09:00–16:59 (never around midnight, where the runs are)."""
        day = instant.astimezone(tz).date()
        return _at(day, rng.randint(9, 16), rng.randint(0, 59), tz)

    def _patients(self, spec: OfficeSpec) -> None:
        office, staff = self.offices[spec.slug], self.users[f"{spec.slug}-staff"]
        offset = 1000 * (OFFICES.index(spec) + 1)
        for i in range(spec.patients):
            n = offset + i
            patient_create(
                office=office,
                first_name="Demo",
                last_name=f"Patient {n}",
                date_of_birth=date(1935, 1, 1) + timedelta(days=n * 7919 % 25000),
                mrn=f"DEMO-{n:05d}",
                actor=staff,
            )
        self.report.created.append(f"{spec.patients} fake patients of {spec.name}")

    def _patient(self, spec: OfficeSpec, i: int) -> Patient:
        offset = 1000 * (OFFICES.index(spec) + 1)
        return Patient.objects.get(office=self.offices[spec.slug], mrn=f"DEMO-{offset + i:05d}")

    def _activate(self, spec: OfficeSpec, i: int) -> None:
        patient_activate(patient=self._patient(spec, i), actor=self.users[f"{spec.slug}-staff"])

    def _deactivate(self, spec: OfficeSpec, i: int) -> None:
        patient_deactivate(patient=self._patient(spec, i), actor=self.users[f"{spec.slug}-staff"])

    def _subscribe(self, spec: OfficeSpec) -> None:
        subscription_create(office=self.offices[spec.slug], plan_code=spec.plan, actor=self.users[OPERATOR])
        if spec.card:
            self.cards[spec.slug] = spec.card  # set as soon as the customer exists, before any push

    def _set_card(self, spec: OfficeSpec, card: str) -> None:
        self.cards[spec.slug] = card
        self._stripe_clock()
        self._stripe_cards()
        self.report.created.append(f"{spec.name}: card replaced by one that declines ({card})")

    def _cycle_invoice(self, spec: OfficeSpec, k: int) -> Invoice:
        """The cycle invoice finalized at boundary k."""
        end = local_midnight(self.boundaries[k], ZoneInfo(spec.timezone))
        return Invoice.objects.get(office=self.offices[spec.slug], kind=InvoiceKind.CYCLE, period_end=end)

    def _pay(self, spec: OfficeSpec, invoice: Invoice) -> None:
        self._stripe_clock()
        received = timezone.now().astimezone(ZoneInfo(spec.timezone)).date()
        invoice_mark_paid_out_of_band(
            invoice=invoice,
            actor=self.users[OPERATOR],
            method=spec.pays,
            reference=f"for {invoice.number}",
            received_on=received,
            amount_cents=invoice.total_cents,
            gateway=self.gateway,
        )

    def _pay_setup_fee(self, spec: OfficeSpec) -> None:
        self._pay(spec, Invoice.objects.get(office=self.offices[spec.slug], is_setup_fee=True))

    def _pay_cycle(self, spec: OfficeSpec, k: int) -> None:
        self._pay(spec, self._cycle_invoice(spec, k))

    def _void(self, spec: OfficeSpec) -> None:
        invoice = self._cycle_invoice(spec, 2)
        invoice_void(invoice=invoice, actor=self.users[OPERATOR], reason=VOID_REASON)
        self.report.created.append(f"{spec.name}: invoice {invoice.number} voided ({VOID_REASON})")

    def _one_off(self, spec: OfficeSpec) -> None:
        invoice = invoice_create_one_off(
            office=self.offices[spec.slug], lines=ONE_OFF_LINES, actor=self.users[OPERATOR]
        )
        self.report.created.append(f"{spec.name}: one-off invoice {invoice.number}")

    # --- Stripe, at the step's instant ----------------------------------------------------

    def _stripe_cards(self) -> None:
        """Set the cards waiting for their office's Stripe customer (a person would do it on
        Stripe's hosted page; card data never passes through us)."""
        for slug, card in list(self.cards.items()):
            customer_id = Office.objects.values_list("payment_provider_customer_id", flat=True).get(
                pk=self.offices[slug].pk
            )
            if customer_id:
                self.stripe.card_set_default(customer_id=customer_id, card=card)
                del self.cards[slug]

    def _stripe_work(self, *, since: int) -> None:
        """Customers, cards, pushes and void syncs the step asked for; then the outcome of
        Stripe's automatic collection, delivered to our webhook endpoint."""
        assert self.gateway is not None or not (self.work.customers or self.work.pushes or self.work.voids)
        gateway = self.gateway or Gateway()
        if self.work.customers or self.work.pushes or self.work.voids:
            self._stripe_clock()
        while self.work.customers:
            customer_ensure(office=Office.objects.get(pk=self.work.customers.pop(0)), gateway=gateway)
        if self.cards:
            self._stripe_cards()
        collecting: list[Invoice] = []
        while self.work.pushes:
            invoice = invoice_push(invoice_id=self.work.pushes.pop(0), gateway=gateway)
            if invoice.stripe_invoice_id is None:
                raise CommandError(
                    f"invoice {invoice.number} was not pushed: {invoice.push_error or invoice.push_state}"
                )
            if invoice.office.collection_method == CollectionMethod.CHARGE_AUTOMATICALLY:
                collecting.append(invoice)
        while self.work.voids:
            invoice_void_sync(invoice_id=self.work.voids.pop(0), gateway=gateway)
        for invoice in collecting:
            self._deliver_collection(invoice, since=since, gateway=gateway)

    def _deliver_collection(self, invoice: Invoice, *, since: int, gateway: Gateway) -> None:
        assert invoice.stripe_invoice_id is not None
        deadline = time.monotonic() + COLLECTION_TIMEOUT
        while True:
            remote = gateway.invoice_retrieve(stripe_invoice_id=invoice.stripe_invoice_id)
            if remote["status"] != "open" or int(remote["attempt_count"] or 0) > 0:
                break
            if time.monotonic() > deadline:
                raise CommandError(f"localstripe did not try to collect {invoice.number} in {COLLECTION_TIMEOUT:.0f} s")
            time.sleep(0.1)
        for event in self.stripe.events_about(invoice.stripe_invoice_id, since):
            self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> None:
        """POST one of Stripe's events to our endpoint, signed as Stripe signs a delivery
        (`t` = now, HMAC-SHA256 of "t.body" with the webhook secret)."""
        body = json.dumps(event).encode()
        t = str(int(time.time()))
        digest = hmac.new(settings.STRIPE_WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256)
        request = self.webhooks.post(
            "/stripe/webhook/",
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=f"t={t},v1={digest.hexdigest()}",
        )
        response = stripe_webhook(request)
        if response.status_code != 200:
            raise CommandError(
                f"webhook {event['type']} {event['id']}: {response.status_code} {response.content[:300]!r}"
            )
