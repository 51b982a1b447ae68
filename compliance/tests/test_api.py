"""Access reviews over the API (issue 12, item 3): a compliance auditor, who has no console,
records a review of a period of the trail, lists the reviews and downloads the CSV the
review was made on; the office's own users may not."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from audit.models import AuditEvent
from audit.services import audit_record, audit_seal
from offices.models import COMPLIANCE_AUDITOR_GROUP

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 15, 12, tzinfo=UTC)


@pytest.fixture
def auditor() -> Client:
    user = get_user_model().objects.create_user(username="auditor-api", password="x")
    user.groups.add(Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)[0])
    client = Client()
    client.force_login(user)
    return client


def test_it_lets_an_auditor_record_list_and_download_a_review(auditor: Client) -> None:
    with time_machine.travel(datetime(2026, 11, 3, 9, tzinfo=UTC), tick=False):
        audit_record(action="invoice.finalized", data={"n": 1})
        audit_record(action="auth.login")
    audit_seal()
    with time_machine.travel(NOW, tick=False):
        created = auditor.post(
            "/api/v1/access-reviews/",
            {
                "period_start": "2026-11-01T00:00:00+00:00",
                "period_end": "2026-11-08T00:00:00+00:00",
                "findings": "Two entries, both expected.",
                "follow_ups": "None.",
            },
            content_type="application/json",
        )
        assert created.status_code == 201, created.content
        review = created.json()
        assert review["reviewer_label"] == "auditor-api" and review["export_rows"] == 2
        listed = auditor.get("/api/v1/access-reviews/").json()
        assert [r["id"] for r in listed["results"]] == [review["id"]]
        csv_answer = auditor.get(f"/api/v1/access-reviews/{review['id']}/export/")
    assert csv_answer.status_code == 200
    assert hashlib.sha256(csv_answer.content).hexdigest() == review["export_sha256"]
    assert AuditEvent.objects.filter(action="access_review.recorded").count() == 1
    assert AuditEvent.objects.filter(action="access_review.export_downloaded").count() == 1


def test_it_refuses_a_review_without_findings_or_of_the_future(auditor: Client) -> None:
    with time_machine.travel(NOW, tick=False):
        empty = auditor.post(
            "/api/v1/access-reviews/",
            {"period_start": "2026-11-01T00:00:00+00:00", "period_end": "2026-11-08T00:00:00+00:00", "findings": " "},
            content_type="application/json",
        )
        future = auditor.post(
            "/api/v1/access-reviews/",
            {"period_start": "2026-11-10T00:00:00+00:00", "period_end": "2026-12-30T00:00:00+00:00", "findings": "x"},
            content_type="application/json",
        )
    assert empty.status_code == 400 and "Findings are required" in empty.json()["message"]
    assert future.status_code == 400
    assert not AuditEvent.objects.filter(action="access_review.recorded").exists()
