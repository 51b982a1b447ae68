"""`manage.py seed_demo`: demo data for `make run`, built through the services.

Plans, one company with three offices in three time zones, a few hundred obviously fake
patients with activation histories, an operator, a billing admin and a staff user per
office, a compliance auditor, one billing run and one operator one-off invoice.

Idempotent: a second run creates nothing (it finds every piece by its natural key and
says the demo data is already there). Every run gives the demo users new random
passwords and prints them, so the printed logins always work. Refuses production
settings: it creates a superuser.

Histories cannot be backdated through the services (they take the clock under the office
lock, by design), so everything happens "now": most patients are activated before the
office subscribes (recurring lines of the first cycle), some after (activation lines),
a few are deactivated or deactivated and reactivated (no credit, no second line), and
some are never activated."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from guardian.shortcuts import get_perms

from billing.engine.run import billing_run
from billing.models import BillingRun, Invoice, InvoiceKind, LineKind, Plan
from billing.services import (
    invoice_create_one_off,
    patient_activate,
    patient_deactivate,
    plan_create,
    subscription_create,
)
from offices.models import COMPLIANCE_AUDITOR_GROUP, Company, Office, Role, SubscriptionStatus
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


PLANS = (
    PlanSpec("starter", "Starter", per_patient_cents=300),
    PlanSpec("professional", "Professional", per_patient_cents=450, minimum_cents=15000, setup_fee_cents=50000),
    PlanSpec("enterprise", "Enterprise", per_patient_cents=350, minimum_cents=100000, trial_days=14),
)
COMPANY_NAME = "Demo Health Partners"
OFFICES = (
    OfficeSpec("manhattan", "Demo Manhattan Clinic", "America/New_York", "professional", 110),
    OfficeSpec("chicago", "Demo Chicago Clinic", "America/Chicago", "starter", 90),
    OfficeSpec("los-angeles", "Demo Los Angeles Clinic", "America/Los_Angeles", "enterprise", 70),
)
ONE_OFF_OFFICE = "manhattan"
ONE_OFF_LINES = [
    {"description": "On-site onboarding workshop for the front desk (demo)", "amount_cents": 25000},
    {"description": "Data migration from the previous billing system (demo)", "amount_cents": 12500, "quantity": 2},
]
OPERATOR = "admin"
AUDITOR = "auditor"


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


_PASSWORD_ALPHABET = string.ascii_letters + string.digits  # one double-click selects it


def _new_password() -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(16))


class Command(BaseCommand):
    help = "Create demo plans, offices, patients, users and invoices (idempotent; prints fresh logins)."

    def handle(self, *args: Any, **options: Any) -> None:
        if str(getattr(settings, "SETTINGS_MODULE", "")).endswith(".production"):
            raise CommandError("seed_demo creates a superuser with a printed password: not with production settings.")
        report = Report()
        with transaction.atomic():
            self._seed(report)
        self._print(report)

    # --- building ---------------------------------------------------------------------

    def _seed(self, report: Report) -> None:
        admin = self._user(report, OPERATOR, role="operator (superuser)", offices="all", operator=True)
        for plan_spec in PLANS:
            self._plan(report, plan_spec, admin)
        company = Company.objects.filter(name=COMPANY_NAME).first()
        if company is None:
            # Companies carry no billing state and have no service: a plain row.
            company = Company.objects.create(name=COMPANY_NAME)
            report.created.append(f"company {COMPANY_NAME}")
        offices: dict[str, Office] = {}
        for spec in OFFICES:
            office = self._office(report, spec, company, admin)
            offices[spec.slug] = office
            billing_user = self._user(report, f"{spec.slug}-billing", role=Role.OFFICE_BILLING_ADMIN, offices=spec.name)
            staff_user = self._user(report, f"{spec.slug}-staff", role=Role.OFFICE_STAFF, offices=spec.name)
            self._grant(office, billing_user, Role.OFFICE_BILLING_ADMIN, admin)
            self._grant(office, staff_user, Role.OFFICE_STAFF, admin)
            self._populate(report, spec, office, staff_user, admin)
        auditor = self._user(report, AUDITOR, role=COMPLIANCE_AUDITOR_GROUP, offices="all (audit trail)")
        group, _ = Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)
        if not auditor.groups.filter(pk=group.pk).exists():
            auditor.groups.add(group)
        self._one_off(report, offices[ONE_OFF_OFFICE], admin)
        if not BillingRun.objects.exists():
            run = billing_run(trigger="seed_demo")
            report.created.append(f"billing run #{run.pk} ({run.offices_due} office(s) due)")

    def _user(self, report: Report, username: str, *, role: str, offices: str, operator: bool = False) -> Any:
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user = user_model(username=username, email=f"{username}@demo.example")
            report.created.append(f"user {username}")
        if operator and isinstance(user, AbstractUser):
            user.is_staff = user.is_superuser = True
        password = _new_password()
        user.set_password(password)  # every run: the printed password is the one that works
        user.is_active = True
        user.save()
        report.logins.append(Login(username=username, role=str(role), offices=offices, password=password))
        return user

    def _plan(self, report: Report, spec: PlanSpec, actor: Any) -> Plan:
        plan = Plan.objects.filter(code=spec.code).first()
        if plan is not None:
            return plan
        report.created.append(f"plan {spec.code}")
        return plan_create(
            code=spec.code,
            name=spec.name,
            per_patient_cents=spec.per_patient_cents,
            minimum_cents=spec.minimum_cents,
            setup_fee_cents=spec.setup_fee_cents,
            trial_days=spec.trial_days,
            actor=actor,
        )

    def _office(self, report: Report, spec: OfficeSpec, company: Company, actor: Any) -> Office:
        office = Office.objects.filter(company=company, name=spec.name).first()
        if office is not None:
            return office
        report.created.append(f"office {spec.name} ({spec.timezone})")
        return office_create(
            name=spec.name,
            billing_email=f"billing@{spec.slug}.demo.example",
            timezone=spec.timezone,
            company=company,
            actor=actor,
        )

    def _grant(self, office: Office, user: Any, role: str, actor: Any) -> None:
        if role not in get_perms(user, office):
            office_member_grant(office=office, user=user, role=role, actor=actor)

    def _populate(self, report: Report, spec: OfficeSpec, office: Office, staff: Any, operator: Any) -> None:
        """Patients and subscription, once per office (skipped when either exists)."""
        if office.subscription_status != SubscriptionStatus.NONE or Patient.objects.filter(office=office).exists():
            return
        offset = sum(s.patients for s in OFFICES[: OFFICES.index(spec)])
        patients = [
            patient_create(
                office=office,
                first_name="Demo",
                last_name=f"Patient {offset + i:03d}",
                date_of_birth=date(1935, 1, 1) + timedelta(days=(offset + i) * 7919 % 25000),
                mrn=f"DEMO-{offset + i:05d}",
                actor=staff,
            )
            for i in range(1, spec.patients + 1)
        ]
        never = [p for i, p in enumerate(patients, 1) if i % 10 == 0]  # onboarding backlog
        used = [p for p in patients if p not in never]
        early, late = used[: len(used) * 3 // 4], used[len(used) * 3 // 4 :]
        for patient in early:
            patient_activate(patient=patient, actor=staff)
        subscription_create(office=office, plan_code=spec.plan, actor=operator)
        for patient in late:  # during the first cycle: activation lines
            patient_activate(patient=patient, actor=staff)
        for i, patient in enumerate(used, 1):
            if i % 15 == 0:  # left the practice: billed this cycle, not the next
                patient_deactivate(patient=patient, actor=staff)
            elif i % 21 == 0:  # came back: still one line this cycle
                patient_deactivate(patient=patient, actor=staff)
                patient_activate(patient=patient, actor=staff)
        report.created.append(f"{len(patients)} patients of {spec.name} ({len(used)} activated), plan {spec.plan}")

    def _one_off(self, report: Report, office: Office, operator: Any) -> None:
        exists = Invoice.objects.filter(office=office, kind=InvoiceKind.ONE_OFF, lines__kind=LineKind.MANUAL).exists()
        if exists:
            return
        invoice = invoice_create_one_off(office=office, lines=ONE_OFF_LINES, actor=operator)
        report.created.append(f"one-off invoice {invoice.number} for {office.name}")

    # --- output -------------------------------------------------------------------------

    def _print(self, report: Report) -> None:
        out = self.stdout
        if report.created:
            out.write(self.style.SUCCESS("Demo data created:"))
            for item in report.created:
                out.write(f"  - {item}")
        else:
            out.write(self.style.SUCCESS("Demo data already present: nothing created."))
        for spec in OFFICES:
            office = Office.objects.select_related("current_plan").get(company__name=COMPANY_NAME, name=spec.name)
            out.write(
                f"  {office.name} [{office.timezone}]: {office.subscription_status}, "
                f"plan {office.current_plan.code if office.current_plan else '-'}, "
                f"{Patient.objects.filter(office=office).count()} patients"
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
