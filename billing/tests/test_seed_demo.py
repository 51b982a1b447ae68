"""`manage.py seed_demo`: four months of history built through the services with the clock
moved, against a real localstripe over HTTP; idempotent; the overview of the last full
month equals the seeded rows added up here by hand. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import date
from io import StringIO
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from guardian.models import UserObjectPermission
from guardian.shortcuts import get_objects_for_user

from audit.models import AuditEvent
from billing.engine.cycles import add_months_clamped, local_midnight
from billing.models import (
    PATIENT_LINE_KINDS,
    BillingRun,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    LineItem,
    LineKind,
    Plan,
    StripeEvent,
)
from billing.overview import overview
from billing.tests.support.localstripe_server import run_localstripe
from billing.tests.support.stripe_helpers import localstripe_env, stripe_get
from offices.models import COMPLIANCE_AUDITOR_GROUP, Office, Role, SubscriptionStatus
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db(transaction=True)  # seed_demo commits step by step and calls Stripe
User = get_user_model()
OFFICE_SLUGS = {
    "manhattan": "America/New_York",
    "chicago": "America/Chicago",
    "los-angeles": "America/Los_Angeles",
    "denver": "America/Denver",
    "phoenix": "America/Phoenix",
    "seattle": "America/Los_Angeles",
}


@pytest.fixture
def stripe_url(settings):
    """A fresh localstripe per test (seed_demo refuses one holding an earlier database's customers)."""
    with run_localstripe() as url, localstripe_env(settings, url):
        yield url


def seed() -> tuple[str, float]:
    out = StringIO()
    started = time.monotonic()
    call_command("seed_demo", stdout=out)
    return out.getvalue(), time.monotonic() - started


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


def test_it_builds_months_of_history_through_the_services(stripe_url):
    output, seconds = seed()
    print(output)
    print(f"seed_demo took {seconds:.1f} s")
    assert "Demo data created" in output
    offices = {slug: office_of(slug) for slug in OFFICE_SLUGS}
    assert {slug: o.timezone for slug, o in offices.items()} == OFFICE_SLUGS
    now = timezone.now()

    # Several months of monthly runs, backdated, one per boundary, then today's.
    runs = list(BillingRun.objects.filter(trigger="seed_demo").order_by("as_of"))
    assert len(runs) == 6
    gaps = [(b.as_of - a.as_of).days for a, b in pairwise(runs[:-1])]  # the boundary runs
    assert all(28 <= gap <= 31 for gap in gaps), gaps
    assert (now - runs[0].as_of).days >= 130 and (now - runs[-2].as_of).days >= 20
    assert all(run.status == "finished" and run.error_count == 0 for run in runs)
    first = min(i.finalized_at for i in Invoice.objects.exclude(finalized_at=None))
    assert (now - first).days >= 130  # history, not "now"

    # Patients activated and deactivated on various days; some never.
    assert Patient.objects.count() == 190
    assert ActivationInterval.objects.filter(deactivated_at__isnull=False).count() >= 10
    days = {i.activated_at.date() for i in ActivationInterval.objects.all()}
    assert len(days) >= 40
    assert Patient.objects.filter(intervals__isnull=True).count() >= 18
    assert ActivationInterval.objects.values("patient_id").annotate().count() <= Patient.objects.count()

    # Invoices in each state.
    statuses = set(Invoice.objects.values_list("status", flat=True))
    assert {InvoiceStatus.DRAFT, InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.VOID} <= statuses
    paid_by_card = Invoice.objects.filter(status=InvoiceStatus.PAID, office=offices["manhattan"])
    assert paid_by_card.count() >= 5 and not paid_by_card.exclude(payment_note="").exists()
    assert AuditEvent.objects.filter(action="payment.succeeded", office_id=offices["manhattan"].pk).count() >= 5
    wired = Invoice.objects.filter(status=InvoiceStatus.PAID, office=offices["chicago"])
    assert wired.count() >= 3 and all(i.payment_note.startswith("Wire transfer") for i in wired)
    assert AuditEvent.objects.filter(action="payment.out_of_band").count() >= 10
    chicago_open = Invoice.objects.get(office=offices["chicago"], status=InvoiceStatus.OPEN)
    assert chicago_open.past_due_at is None and chicago_open.due_at > now  # open, not due yet
    assert not Invoice.objects.exclude(status=InvoiceStatus.DRAFT).filter(stripe_invoice_id=None).exists()

    # Stripe collection and its webhooks (real localstripe events through our endpoint).
    assert StripeEvent.objects.filter(type="invoice.paid").count() >= 10
    stripe_paid = {i["id"] for i in stripe_get(stripe_url, "/v1/invoices", limit=100, status="paid")["data"]}
    assert set(paid_by_card.values_list("stripe_invoice_id", flat=True)) <= stripe_paid

    # A failed payment, audited; past due; the office suspended by dunning after the grace period.
    denver = offices["denver"]
    assert denver.subscription_status == SubscriptionStatus.SUSPENDED
    failed = AuditEvent.objects.get(action="payment.failed")
    assert failed.office_id == denver.pk and failed.actor_type == "stripe" and failed.outcome == "failure"
    assert 14 < (now - failed.ts).days < 30
    declined = Invoice.objects.get(pk=int(failed.target_id))
    assert declined.status == InvoiceStatus.OPEN and declined.past_due_at is not None
    suspended = AuditEvent.objects.get(action="subscription.suspended", office_id=denver.pk)
    assert (suspended.ts - declined.past_due_at).days == django_settings.BILLING_GRACE_DAYS
    assert StripeEvent.objects.filter(type="invoice.payment_failed").count() == 1

    # Phoenix: paid one invoice late (past due, then active again), owes the last one now.
    phoenix = offices["phoenix"]
    assert phoenix.subscription_status == SubscriptionStatus.PAST_DUE
    assert AuditEvent.objects.filter(action="subscription.reactivated", office_id=phoenix.pk).exists()
    assert Invoice.objects.filter(office=phoenix, status=InvoiceStatus.PAID, past_due_at__isnull=False).exists()
    for slug in ("manhattan", "chicago", "los-angeles", "seattle"):
        assert offices[slug].subscription_status == SubscriptionStatus.ACTIVE, slug

    # A void with its reason, carried to Stripe.
    void = Invoice.objects.get(status=InvoiceStatus.VOID)
    assert void.office == offices["seattle"] and void.kind == InvoiceKind.CYCLE
    voided = AuditEvent.objects.get(action="invoice.voided")
    assert voided.target_id == str(void.pk) and "renovation" in voided.reason and voided.actor_label == "admin"
    assert stripe_get(stripe_url, f"/v1/invoices/{void.stripe_invoice_id}")["status"] == "void"

    # One-offs: the setup fees of the professional plan and an operator's one-off service.
    setup = Invoice.objects.filter(lines__kind=LineKind.SETUP_FEE, status=InvoiceStatus.PAID)
    assert set(setup.values_list("office__name", flat=True)) == {offices["manhattan"].name, offices["phoenix"].name}
    one_off = Invoice.objects.get(kind=InvoiceKind.ONE_OFF, lines__kind=LineKind.MANUAL, lines__quantity=2)
    assert one_off.status == InvoiceStatus.PAID and one_off.total_cents == 50000

    # The trial office: trialing first, then billed with the plan minimum.
    la = offices["los-angeles"]
    assert AuditEvent.objects.filter(action="subscription.trial_ended", office_id=la.pk).exists()
    assert LineItem.objects.filter(invoice__office=la, kind=LineKind.MINIMUM_ADJUSTMENT).exists()

    # No PHI anywhere billing writes: the audit trail and Stripe's invoices.
    names = [f"{p.first_name} {p.last_name}" for p in Patient.objects.all()]
    mrns = list(Patient.objects.values_list("mrn", flat=True))
    audit_text = " ".join(str(e.data) + e.reason for e in AuditEvent.objects.all())
    stripe_text = str(stripe_get(stripe_url, "/v1/invoices", limit=100))
    for text in (audit_text, stripe_text, output):
        assert not [n for n in names if n in text] and not [m for m in mrns if m in text]

    # Users and roles: a billing admin and a staff user per office, an operator, an auditor.
    for slug, office in offices.items():
        billing = User.objects.get(username=f"{slug}-billing")
        staff = User.objects.get(username=f"{slug}-staff")
        assert billing.has_perm(f"offices.{Role.OFFICE_BILLING_ADMIN}", office)
        assert staff.has_perm(f"offices.{Role.OFFICE_STAFF}", office)
        assert not (billing.is_staff or staff.is_staff)
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser
    auditor = User.objects.get(username="auditor")
    assert list(auditor.groups.values_list("name", flat=True)) == [COMPLIANCE_AUDITOR_GROUP]
    assert set(Plan.objects.values_list("code", flat=True)) == {"starter", "professional", "enterprise"}
    call_command("verify_audit_chain", stdout=StringIO())

    assert seconds < 60


@dataclass(frozen=True)
class MonthByHand:
    """A month's overview figures, added up here from the rows (billing/overview.py's
    definitions, independent arithmetic: plain queries and Python sums)."""

    month: date
    billed: int
    collected: int
    outstanding: int
    past_due: int
    mrr: int
    mrr_draft: int
    billable: int
    active: int


def last_full_month_by_hand() -> MonthByHand:
    now = timezone.now()
    tz = ZoneInfo(str(django_settings.BILLING_DEFAULT_TIMEZONE))
    month = add_months_clamped(now.astimezone(tz).date().replace(day=1), -1)
    start, end = local_midnight(month, tz), local_midnight(add_months_clamped(month, 1), tz)
    assert end <= now  # a full month

    def total(invoices) -> int:
        return sum(invoices.values_list("total_cents", flat=True))

    finalized = Invoice.objects.filter(finalized_at__gte=start, finalized_at__lt=end)
    open_at_end = [  # finalized before the end, not yet paid, voided or written off then
        i
        for i in Invoice.objects.filter(finalized_at__lt=end)
        if not (i.paid_at and i.paid_at < end)
        and not (i.voided_at and i.voided_at < end)
        and not (i.marked_uncollectible_at and i.marked_uncollectible_at < end)
    ]
    cycles = Invoice.objects.filter(kind=InvoiceKind.CYCLE, period_start__gte=start, period_start__lt=end)
    billable = {
        line.patient_id
        for line in LineItem.objects.filter(
            kind__in=PATIENT_LINE_KINDS,
            invoice__kind=InvoiceKind.CYCLE,
            invoice__finalized_at__gte=start,
            invoice__finalized_at__lt=end,
        ).exclude(invoice__status=InvoiceStatus.VOID)
    }
    active = {
        interval.patient_id
        for interval in ActivationInterval.objects.all()
        if interval.activated_at < end and (interval.deactivated_at is None or interval.deactivated_at >= end)
    }
    return MonthByHand(
        month=month,
        billed=total(finalized.exclude(status=InvoiceStatus.VOID)),
        collected=total(Invoice.objects.filter(status=InvoiceStatus.PAID, paid_at__gte=start, paid_at__lt=end)),
        outstanding=sum(i.total_cents for i in open_at_end),
        past_due=sum(i.total_cents for i in open_at_end if i.past_due_at and i.past_due_at < end),
        mrr=total(cycles.exclude(status=InvoiceStatus.VOID)),
        mrr_draft=total(cycles.filter(status=InvoiceStatus.DRAFT)),
        billable=len(billable),
        active=len(active),
    )


def test_it_reports_the_last_full_month_as_the_seeded_rows_add_up(stripe_url):
    seed()
    hand = last_full_month_by_hand()

    report = overview(month=hand.month)

    # Every month of the history has a boundary run and card payments (what is still open at
    # its end depends on today's date: the figures are compared, not required to be non-zero).
    assert hand.billed > 0 and hand.collected > 0 and hand.mrr > 0
    assert hand.billable > 0 and hand.active > 0
    [usd] = report.figures
    assert (usd.currency, usd.billed_cents, usd.collected_cents) == ("usd", hand.billed, hand.collected)
    assert (usd.outstanding_cents, usd.past_due_cents) == (hand.outstanding, hand.past_due)
    assert (usd.mrr_cents, usd.mrr_draft_cents) == (hand.mrr, hand.mrr_draft)
    assert (report.billable_patients_in_month, report.active_patients) == (hand.billable, hand.active)
    assert report.suspended_total == 1 and report.suspended_offices[0].name == "Demo Denver Clinic"
    assert report.failed_payments_total == 1
    assert len(report.latest_runs) == 5 and all(r.trigger == "seed_demo" for r in report.latest_runs)


def test_it_creates_nothing_the_second_time_and_prints_logins_that_work(stripe_url):
    first_output, _ = seed()
    first = printed_passwords(first_output)
    expected = {"admin", "auditor"} | {f"{s}-{r}" for s in OFFICE_SLUGS for r in ("billing", "staff")}
    assert set(first) == expected
    for username, password in first.items():
        assert User.objects.get(username=username).check_password(password), username
    counts = _counts()
    stripe_invoices = len(stripe_get(stripe_url, "/v1/invoices", limit=100)["data"])

    output, seconds = seed()

    assert "Demo data already present: nothing created." in output
    assert _counts() == counts
    assert len(stripe_get(stripe_url, "/v1/invoices", limit=100)["data"]) == stripe_invoices
    assert seconds < 5
    second = printed_passwords(output)
    assert set(second) == expected
    for username, password in second.items():  # reset: only the latest printed password works
        user = User.objects.get(username=username)
        assert user.check_password(password), username
        assert not user.check_password(first[username])


def test_it_refuses_a_half_made_history_and_a_localstripe_of_another_database(stripe_url, settings):
    from offices.models import Company

    Company.objects.create(name="Demo Health Partners")
    with pytest.raises(CommandError, match="incomplete"):
        seed()
    Company.objects.all().delete()
    import requests

    requests.post(
        f"{stripe_url}/v1/customers",
        data={"name": "Someone else"},
        headers={"Authorization": f"Bearer {settings.STRIPE_SECRET_KEY}"},
        timeout=5,
    ).raise_for_status()
    with pytest.raises(CommandError, match="earlier database"):
        seed()
    assert not Office.objects.exists()


def test_it_refuses_production_settings_and_real_stripe(settings):
    settings.SETTINGS_MODULE = "config.settings.production"
    with pytest.raises(CommandError, match="production"):
        seed()
    settings.SETTINGS_MODULE = "config.settings.test"
    settings.STRIPE_API_BASE = ""
    with pytest.raises(CommandError, match="localstripe"):
        seed()
    assert not Office.objects.exists()


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
        "events": StripeEvent.objects.count(),
    }
