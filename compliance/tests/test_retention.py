"""The six-year rule as a job (45 CFR 164.316(b)(2), issue 12 item 9): what is past
retention is reported and kept; only expired sessions and API tokens are deleted."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.management import call_command
from knox.models import AuthToken

from audit.models import AuditEvent
from audit.services import audit_anchor, audit_seal
from billing.engine.run import billing_run
from billing.models import BillingRun, Invoice, LineItem, PlanChange
from billing.services import patient_activate, patient_deactivate, subscription_create
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at
from compliance.models import AccessReview
from compliance.selectors import retention_cutoff
from compliance.services import access_review_record, retention_sweep
from patients.models import ActivationInterval, Patient

pytestmark = pytest.mark.django_db
START = datetime(2026, 1, 10, 9, tzinfo=UTC)
DOCUMENTATION = (AuditEvent, Invoice, LineItem, BillingRun, PlanChange, ActivationInterval, Patient, AccessReview)


def _counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in DOCUMENTATION}


@pytest.fixture
def history() -> Any:
    """A quarter of billing in 2026, a review, and credentials: two sessions and two tokens
    (one of each expires an hour after it is made, the other lasts ten years)."""
    PlanFactory(code="basic", per_patient_cents=1000, setup_fee_cents=0)
    with at(START):
        user = get_user_model().objects.create_superuser(username="root", email="r@vendor.example", password="x")
        office = OfficeFactory(timezone="UTC")
        patients = [PatientFactory(office=office) for _ in range(3)]
        for p in patients:
            patient_activate(patient=p)
        subscription_create(office=office, plan_code="basic")
        Session.objects.create(session_key="short", session_data="", expire_date=START + timedelta(hours=1))
        Session.objects.create(session_key="long", session_data="", expire_date=START + timedelta(days=3650))
        AuthToken.objects.create(user=user, expiry=timedelta(hours=1))
        AuthToken.objects.create(user=user, expiry=timedelta(days=3650))
    with at(START + timedelta(days=20)):
        patient_deactivate(patient=patients[0])
    with at(datetime(2026, 4, 10, 0, 5, tzinfo=UTC)):
        billing_run()
    with at(datetime(2026, 4, 11, tzinfo=UTC)):
        access_review_record(
            reviewer=user,
            period_start=datetime(2026, 1, 1, tzinfo=UTC),
            period_end=datetime(2026, 4, 1, tzinfo=UTC),
            findings="No findings.",
        )
        audit_seal()
        audit_anchor()
    return user


def test_it_takes_six_calendar_years_as_the_window() -> None:
    assert retention_cutoff(datetime(2033, 3, 1, tzinfo=UTC)) == datetime(2027, 3, 1, tzinfo=UTC)
    assert retention_cutoff(datetime(2032, 2, 29, 12, tzinfo=UTC)) == datetime(2026, 2, 28, 12, tzinfo=UTC)


def test_it_deletes_only_expired_credentials_inside_the_window(history: Any) -> None:
    before = _counts()
    with at(datetime(2026, 6, 1, tzinfo=UTC)):
        report = retention_sweep()
    assert report.deleted == {"expired_sessions": 1, "expired_api_tokens": 1}
    assert set(report.past_retention.values()) == {0}
    assert list(Session.objects.values_list("session_key", flat=True)) == ["long"]
    assert AuthToken.objects.count() == 1
    after = _counts()
    after["AuditEvent"] -= 1  # the sweep's own entry
    assert after == before


def test_it_reports_but_never_deletes_billing_and_audit_records_past_six_years(history: Any) -> None:
    before = _counts()
    invoices = Invoice.objects.filter(finalized_at__isnull=False).count()
    lines = LineItem.objects.filter(invoice__finalized_at__isnull=False).count()
    events = AuditEvent.objects.count()
    with at(datetime(2033, 6, 1, tzinfo=UTC)):  # seven years on: all of 2026 is past retention
        report = retention_sweep()
    assert report.cutoff == datetime(2027, 6, 1, tzinfo=UTC)
    past = report.past_retention
    assert past["audit_events"] == events and past["invoices"] == invoices and past["invoice_lines"] == lines
    assert past["billing_runs"] == 1 and past["access_reviews"] == 1 and past["audit_anchors"] == 1
    assert past["activation_intervals"] == 1  # the one closed interval; open ones are still in effect
    assert past["plan_changes"] == PlanChange.objects.count()
    assert report.deleted == {"expired_sessions": 1, "expired_api_tokens": 1}  # the ten-year ones still live
    assert Session.objects.count() == 1 and AuthToken.objects.count() == 1
    after = _counts()
    after["AuditEvent"] -= 1
    assert after == before  # nothing of the record is gone
    entry = AuditEvent.objects.get(action="retention.swept")
    assert entry.data["past_retention_kept"]["invoices"] == invoices
    assert entry.data["deleted"] == {"expired_sessions": 1, "expired_api_tokens": 1}


def test_it_deletes_nothing_on_a_dry_run(history: Any) -> None:
    with at(datetime(2026, 6, 1, tzinfo=UTC)):
        out = io.StringIO()
        call_command("retention_sweep", "--dry-run", stdout=out)
    assert "Would delete expired_sessions: 1" in out.getvalue() and "audit_events: 0" in out.getvalue()
    assert Session.objects.count() == 2 and AuthToken.objects.count() == 2
    assert AuditEvent.objects.get(action="retention.swept").data["would_delete"]["expired_api_tokens"] == 1


def test_it_runs_daily_from_the_beat_schedule_like_the_other_jobs() -> None:
    from config.celery_app import app

    entry = settings.CELERY_BEAT_SCHEDULE["compliance-retention-daily"]
    assert entry == {"task": "compliance.tasks.retention_sweep_task", "schedule": 86400.0}
    app.loader.import_default_modules()
    assert "compliance.tasks.retention_sweep_task" in app.tasks


def test_it_runs_the_task_with_its_task_id_in_the_audit_entry(history: Any) -> None:
    from compliance.tasks import retention_sweep_task

    with at(datetime(2026, 6, 1, tzinfo=UTC)):
        result = retention_sweep_task.apply(task_id="retention-test-1").get()
    assert result == {"expired_sessions": 1, "expired_api_tokens": 1}
    assert AuditEvent.objects.get(action="retention.swept").task_id == "retention-test-1"
