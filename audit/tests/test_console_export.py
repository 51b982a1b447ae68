"""The audit trail's CSV export from the console (issue 9, item 7): the selected entries (or
all of a filtered list) as the API's export writes them, formula-escaped, and audited."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from audit.export import EXPORT_FIELDS
from audit.models import AuditEvent
from audit.services import audit_record, audit_seal

pytestmark = pytest.mark.django_db


def test_it_exports_the_selected_entries_oldest_first_and_audits_the_export() -> None:
    audit_record(action="billing_run.finished", reason="=HYPERLINK(1)", data={"n": 1})
    audit_record(action="invoice.finalized", reason="plain")
    audit_record(action="invoice.finalized", reason="plain too")
    audit_seal()
    client = Client()
    client.force_login(get_user_model().objects.create_superuser(username="auditor-op", password="x"))
    chosen = list(AuditEvent.objects.filter(action__in=["billing_run.finished", "invoice.finalized"]).order_by("-seq"))
    assert all(e.seq is not None for e in chosen)
    response = client.post(
        reverse("admin:audit_auditevent_changelist"),
        {"action": "export_csv", "index": "0", "_selected_action": [str(e.pk) for e in chosen]},
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-trail-')
    header, *rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert header == list(EXPORT_FIELDS)
    assert [int(row[0]) for row in rows] == [e.pk for e in sorted(chosen, key=lambda e: e.seq)]  # ids, by seq
    reasons = [dict(zip(header, row, strict=True))["reason"] for row in rows]
    assert reasons[0] == "'=HYPERLINK(1)"  # a formula is never live in a spreadsheet
    exported = AuditEvent.objects.filter(action="audit.exported").get()
    assert exported.actor_label == "auditor-op" and exported.data == {"format": "csv", "rows": 3, "via": "console"}
