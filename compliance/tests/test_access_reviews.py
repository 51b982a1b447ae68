"""Access review records (45 CFR 164.308(a)(1)(ii)(D), issue 12 item 3): who, when, the
period, findings (PHI-guarded), the period's audit CSV with its SHA-256; append-only,
audited, and the console's overview flags an overdue review."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import DatabaseError, IntegrityError, transaction
from django.test import Client, RequestFactory

from audit.export import EXPORT_FIELDS
from audit.models import AuditEvent
from audit.services import audit_record
from billing.phi_guard import PhiRefused
from billing.tests.support.factories import OfficeFactory, PatientFactory, at
from compliance.admin import AccessReviewAdmin
from compliance.models import AccessReview
from compliance.selectors import access_review_status
from compliance.services import access_review_record
from config.errors import ApplicationError, PermissionDeniedError
from offices.models import COMPLIANCE_AUDITOR_GROUP

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 20, 10, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def operator() -> Any:
    return get_user_model().objects.create_superuser(username="root", email="root@vendor.example", password="x")


@pytest.fixture
def trail() -> list[AuditEvent]:
    """Three entries in October, one in November."""
    entries = []
    for moment in (utc(2026, 9, 30, 23, 59), utc(2026, 10, 1), utc(2026, 10, 15), utc(2026, 10, 31, 23, 59)):
        with at(moment):
            entries.append(audit_record(action="test.thing_done", data={"n": len(entries)}))
    with at(utc(2026, 11, 2)):
        entries.append(audit_record(action="test.thing_done", data={"n": len(entries)}))
    return entries


def _record(reviewer: Any, **kw: Any) -> AccessReview:
    fields: dict[str, Any] = {
        "period_start": utc(2026, 10, 1),
        "period_end": utc(2026, 11, 1),
        "findings": "No unexplained access.",
        "follow_ups": "Rotate the shared test password by Dec 1.",
    }
    fields.update(kw)
    with at(NOW):
        return access_review_record(reviewer=reviewer, **fields)


def test_it_records_who_when_the_period_and_the_periods_audit_export(operator: Any, trail: list[AuditEvent]) -> None:
    review = _record(operator)
    assert (review.reviewer, review.reviewer_label, review.reviewed_at) == (operator, "root", NOW)
    body = gzip.decompress(bytes(review.export_csv_gz))
    assert hashlib.sha256(body).hexdigest() == review.export_sha256
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert tuple(rows[0]) == EXPORT_FIELDS  # the audit trail's own CSV export
    ids = [int(r[0]) for r in rows[1:]]
    assert ids == [e.pk for e in trail[1:4]]  # [Oct 1, Nov 1): the edges as half-open
    assert review.export_rows == 3
    entry = AuditEvent.objects.get(action="access_review.recorded")
    assert entry.actor_label == "root" and entry.target_id == str(review.pk)
    assert entry.data["export_sha256"] == review.export_sha256 and entry.data["export_rows"] == 3


def test_it_refuses_findings_that_carry_phi_audits_the_refusal_and_saves_nothing(operator: Any) -> None:
    office = OfficeFactory(name="Lakeside Clinic")
    PatientFactory(office=office, first_name="Quintessa", last_name="Vandermolen", mrn="MRN-QV-99120",
                   date_of_birth=date(1944, 7, 3))  # fmt: skip
    for field, text in (
        ("findings", "Operator opened the chart of Quintessa Vandermolen twice."),
        ("findings", "MRN-QV-99120 was viewed at night."),
        ("follow_ups", "Ask Vandermolen's office."),
        ("findings", "Record dated 07/03/1944 seen."),
    ):
        with pytest.raises(PhiRefused) as refused:
            _record(operator, **{"findings": "ok", field: text})
        assert refused.value.field_name == field
    assert AccessReview.objects.count() == 0
    refusals = AuditEvent.objects.filter(action="phi_guard.refused", outcome="denied")
    assert refusals.count() == 4
    for entry in refusals:
        assert "Vandermolen" not in str(entry.data) + entry.reason and "99120" not in str(entry.data)
    # The office's own name is no patient's.
    assert _record(operator, findings="Lakeside Clinic: nothing unusual.").pk


def test_it_refuses_bad_periods_and_empty_findings(operator: Any) -> None:
    with pytest.raises(ApplicationError, match="end after it starts"):
        _record(operator, period_start=utc(2026, 11, 1), period_end=utc(2026, 10, 1))
    with pytest.raises(ApplicationError, match="future"):
        _record(operator, period_end=utc(2026, 12, 1))
    with pytest.raises(ApplicationError, match="time zone"):
        _record(operator, period_start=datetime(2026, 10, 1))
    with pytest.raises(ApplicationError, match="Findings are required"):
        _record(operator, findings="  ")
    assert AccessReview.objects.count() == 0


def test_it_lets_auditors_and_operators_record_reviews_and_nobody_else(operator: Any) -> None:
    auditor = get_user_model().objects.create_user(username="auditor", password="x")
    auditor.groups.add(Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)[0])
    assert _record(auditor).reviewer_label == "auditor"
    assert _record(operator).reviewer_label == "root"
    member = get_user_model().objects.create_user(username="lakeside-billing", password="x")
    with pytest.raises(PermissionDeniedError):
        _record(member)


def test_it_keeps_reviews_append_only(operator: Any) -> None:
    review = _record(operator)
    with pytest.raises((IntegrityError, DatabaseError)), transaction.atomic():
        AccessReview.objects.filter(pk=review.pk).update(findings="rewritten")
    review.refresh_from_db()
    assert review.findings == "No unexplained access."
    request = RequestFactory().get("/")
    request.user = operator
    model_admin = AccessReviewAdmin(AccessReview, __import__("django.contrib.admin", fromlist=["site"]).site)
    assert model_admin.has_change_permission(request, review) is False
    assert model_admin.has_delete_permission(request, review) is False
    assert "delete_selected" not in model_admin.get_actions(request)
    correction = _record(operator, findings="Correction: one login was unexplained.", corrects=review)
    assert correction.corrects == review and AccessReview.objects.count() == 2


def test_it_refuses_deleting_a_review_on_postgres(operator: Any, on_postgres: None) -> None:
    review = _record(operator)
    with pytest.raises((IntegrityError, DatabaseError)), transaction.atomic():
        AccessReview.objects.filter(pk=review.pk).delete()
    assert AccessReview.objects.filter(pk=review.pk).exists()


def test_it_flags_a_review_overdue_after_the_interval(operator: Any, settings: Any) -> None:
    settings.ACCESS_REVIEW_INTERVAL_DAYS = 31
    with at(NOW):
        assert access_review_status().overdue is True  # never reviewed
    review = _record(operator)
    status = access_review_status(now=NOW + timedelta(days=31))
    assert (status.last, status.overdue, status.due_at) == (review, False, NOW + timedelta(days=31))
    assert access_review_status(now=NOW + timedelta(days=31, seconds=1)).overdue is True
    settings.ACCESS_REVIEW_INTERVAL_DAYS = 90
    assert access_review_status(now=NOW + timedelta(days=60)).overdue is False


def test_it_records_a_review_in_the_console_and_shows_it_on_the_overview(
    operator: Any, trail: list[AuditEvent], client: Client
) -> None:
    with at(NOW):
        client.force_login(operator)
        overview = client.get("/admin/").content.decode()
        assert 'id="access-review" data-overdue="true"' in overview and "No access review has been recorded" in overview
        form = client.get("/admin/compliance/accessreview/add/")
        assert form.status_code == 200
        response = client.post(
            "/admin/compliance/accessreview/add/",
            {"period_from": "2026-10-01", "period_through": "2026-10-31", "findings": "Nothing unusual.",
             "follow_ups": ""},
        )  # fmt: skip
        assert response.status_code == 302, response.content.decode()[:2000]
        review = AccessReview.objects.get()
        assert (review.reviewer, review.period_start, review.period_end) == (
            operator,
            utc(2026, 10, 1),
            utc(2026, 11, 1),
        )
        assert review.export_rows == 3
        overview = client.get("/admin/").content.decode()
        assert 'data-overdue="false"' in overview and "Last review recorded 2026-11-20" in overview
        listing = client.get("/admin/compliance/accessreview/").content.decode()
        assert 'href="/admin/compliance/accessreview/evidence/"' in listing and "root" in listing
        page = client.get(f"/admin/compliance/accessreview/{review.pk}/change/").content.decode()
        assert "Download the CSV (3 rows)" in page
        download = client.get(f"/admin/compliance/accessreview/{review.pk}/export.csv")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == review.export_sha256
    assert AuditEvent.objects.filter(action="access_review.export_downloaded", actor_label="root").count() == 1
    with at(NOW + timedelta(days=40)):
        client.force_login(operator)
        assert 'data-overdue="true"' in client.get("/admin/").content.decode()


def test_it_shows_a_phi_refusal_as_a_form_error_in_the_console(operator: Any, client: Client) -> None:
    office = OfficeFactory(name="Lakeside Clinic")
    PatientFactory(office=office, first_name="Quintessa", last_name="Vandermolen")
    with at(NOW):
        client.force_login(operator)
        response = client.post(
            "/admin/compliance/accessreview/add/",
            {"period_from": "2026-10-01", "period_through": "2026-10-31", "findings": "Vandermolen chart opened"},
        )
    assert response.status_code == 200
    assert "looks like it contains patient information" in response.content.decode()
    assert "Vandermolen" not in response.content.decode().replace("Vandermolen chart opened", "")
    assert AccessReview.objects.count() == 0
    assert AuditEvent.objects.filter(action="phi_guard.refused").count() == 1


def test_it_lists_access_reviews_in_the_compliance_sidebar(operator: Any) -> None:
    from config.console import SECTIONS

    compliance = next(entries for title, _, entries in SECTIONS if title == "Compliance")
    assert ("Access reviews", "admin:compliance_accessreview_changelist") in [(e[0], e[1]) for e in compliance]
