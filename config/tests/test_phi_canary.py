"""PHI canary (spec §5, §9, §10): a patient with unmistakable values goes through the whole
billing cycle, then none of those values may appear in any billing response, invoice PDF,
audit row or log line, while the staff's patients endpoint does show them.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.serializers.json import DjangoJSONEncoder
from django.test import Client
from pypdf import PdfReader

from audit.models import AuditEvent
from billing.models import Invoice
from billing.tests.support.factories import at
from offices.models import COMPLIANCE_AUDITOR_GROUP, Role

pytestmark = pytest.mark.django_db

CANARY = {
    "first_name": "Zebulonquux",
    "last_name": "Xylophantine",
    "date_of_birth": "1931-02-03",
    "mrn": "MRN-CANARY-7731",
    "email": "canary.patient@phi.example",
    "phone": "+1 (555) 013-7731",
}
# Every written form under which the canary could leak.
CANARY_STRINGS = [
    "Zebulonquux",
    "Xylophantine",
    "MRN-CANARY-7731",
    "CANARY-7731",
    "canary.patient@phi.example",
    "canary.patient",
    "+1 (555) 013-7731",
    "(555) 013-7731",
    "555-013-7731",
    "5550137731",
    "1931-02-03",
    "02/03/1931",
    "2/3/1931",
    "1931/02/03",
    "19310203",
    "February 3, 1931",
    "Feb 3, 1931",
    "3 February 1931",
    "03.02.1931",
]


GRANTED = (200, 201)  # the spec says 200 for a grant; the authorization matrix holds the code to it


def leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [s for s in CANARY_STRINGS if s.lower() in lowered]


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw-canary-1234", **extra)


class As:
    """One role's client; logs in again for each call because the clock travels."""

    def __init__(self, user: Any) -> None:
        self.user, self.client = user, Client()

    def call(self, method: str, path: str, body: Any = None, expect: int | tuple[int, ...] = 200) -> Any:
        self.client.force_login(self.user)
        url = path if path.startswith("/") else "/api/v1/" + path
        kw = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
        response = getattr(self.client, method)(url, **kw)
        codes = expect if isinstance(expect, tuple) else (expect,)
        assert response.status_code in codes, (method, url, response.status_code, response.content[:400])
        return response


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(content)).pages)


def all_pages(who: As, path: str) -> list[dict[str, Any]]:
    sep = "&" if "?" in path else "?"
    body = who.call("get", f"{path}{sep}page_size=500").json()
    assert body["next"] is None
    return body["results"]


def test_it_keeps_canary_phi_out_of_billing_pdfs_audit_and_logs(
    caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    command_output = io.StringIO()

    op = As(make_user("operator", is_staff=True))
    staff = As(make_user("staff"))
    admin = As(make_user("admin"))
    auditor_user = make_user("auditor")
    auditor_user.groups.add(Group.objects.get_or_create(name=COMPLIANCE_AUDITOR_GROUP)[0])
    auditor = As(auditor_user)

    with django_capture_on_commit_callbacks(execute=True):
        with at(datetime(2026, 3, 5, 15, tzinfo=UTC)):
            op.call(
                "post",
                "plans/",
                {
                    "code": "professional",
                    "name": "Professional",
                    "currency": "usd",
                    "per_patient_cents": 450,
                    "minimum_cents": 15000,
                    "setup_fee_cents": 50000,
                    "trial_days": 0,
                },
                expect=201,
            )
            oid = op.call(
                "post",
                "offices/",
                {
                    "name": "Canary Clinic",
                    "timezone": "America/Chicago",
                    "billing_email": "billing@canary-clinic.example",
                },
                expect=201,
            ).json()["id"]
            op.call(
                "post", f"offices/{oid}/members/", {"user": staff.user.pk, "role": Role.OFFICE_STAFF}, expect=GRANTED
            )
            op.call(
                "post",
                f"offices/{oid}/members/",
                {"user": admin.user.pk, "role": Role.OFFICE_BILLING_ADMIN},
                expect=GRANTED,
            )
            canary = staff.call("post", f"offices/{oid}/patients/", CANARY, expect=201).json()
            other = staff.call(
                "post",
                f"offices/{oid}/patients/",
                {"first_name": "Plain", "last_name": "Person", "date_of_birth": "1980-06-07", "mrn": "MRN-PLAIN-1"},
                expect=201,
            ).json()
            staff.call("post", f"patients/{canary['id']}/activate/")
            staff.call("post", f"patients/{other['id']}/activate/")

        with at(datetime(2026, 3, 10, 15, tzinfo=UTC)):  # subscribe: setup fee + first cycle draft
            admin.call("post", f"offices/{oid}/subscription/", {"plan": "professional"}, expect=201)

        with at(datetime(2026, 3, 20, 15, tzinfo=UTC)):  # deactivate and reactivate inside the cycle
            staff.call("post", f"patients/{canary['id']}/deactivate/")
            staff.call("post", f"patients/{canary['id']}/activate/")

        run_at = datetime(2026, 4, 10, 6, tzinfo=UTC)
        with at(run_at):
            call_command("run_billing_cycle", as_of=run_at.isoformat(), stdout=command_output, stderr=command_output)

        refusals = []
        with at(datetime(2026, 4, 12, 15, tzinfo=UTC)):
            op.call(
                "post",
                f"offices/{oid}/one-off-invoices/",
                {"lines": [{"description": "Onboarding training", "amount_cents": 25000}]},
                expect=201,
            )
            # An operator who types PHI into free text is refused (400) and the refusal is
            # audited; neither the answer nor the audit row may repeat what was typed.
            for text in (
                "Follow-up for Zebulonquux Xylophantine",
                "Records copy, MRN-CANARY-7731",
                "Patient born 02/03/1931",
                "Call +1 (555) 013-7731",
                "Send to canary.patient@phi.example",
            ):
                refusals.append(
                    op.call(
                        "post",
                        f"offices/{oid}/one-off-invoices/",
                        {"lines": [{"description": text, "amount_cents": 1000}]},
                        expect=400,
                    ).content.decode()
                )

        with at(datetime(2026, 4, 15, 15, tzinfo=UTC)):
            staff.call("post", f"patients/{canary['id']}/deactivate/")

        run_at = datetime(2026, 5, 10, 6, tzinfo=UTC)
        with at(run_at):
            call_command("run_billing_cycle", as_of=run_at.isoformat(), stdout=command_output, stderr=command_output)

    # The cycle really happened: the canary was billed by reference in two cycles.
    invoices = Invoice.objects.filter(office_id=oid)
    assert invoices.filter(kind="cycle", status="open").count() == 2
    assert invoices.filter(kind="one_off").count() == 2
    assert invoices.filter(lines__patient_ref=canary["billing_ref"]).distinct().count() == 2  # March and April

    with at(datetime(2026, 5, 10, 7, tzinfo=UTC)):
        # Positive control: the staff's patients endpoint shows the canary (so the search works).
        staff_view = json.dumps(all_pages(staff, f"offices/{oid}/patients/"))
        for value in ("Zebulonquux", "Xylophantine", "MRN-CANARY-7731", "1931-02-03", "canary.patient@phi.example"):
            assert value in staff_view
        assert "(555) 013-7731" in staff_view

        responses: dict[str, str] = {}
        pdfs: dict[str, str] = {}
        for who_name, who in (("admin", admin), ("operator", op)):
            for path in (
                "offices/",
                f"offices/{oid}/",
                f"offices/{oid}/subscription/",
                f"offices/{oid}/payment-status/",
                f"offices/{oid}/invoices/?page_size=500",
                "plans/",
                "audit-events/?page_size=500",
            ):
                responses[f"{who_name} GET {path}"] = who.call("get", path).content.decode()
            for inv in all_pages(who, f"offices/{oid}/invoices/"):
                detail = who.call("get", f"invoices/{inv['id']}/")
                responses[f"{who_name} GET invoices/{inv['id']}/"] = detail.content.decode()
                if who is admin:  # the document is the same for every reader; rendering is slow
                    pdf = who.call("get", f"invoices/{inv['id']}/pdf/")
                    pdfs[f"PDF of invoice {inv['id']}"] = pdf_text(pdf.content)
        responses["operator GET patients"] = op.call("get", f"offices/{oid}/patients/").content.decode()
        responses["auditor GET audit-events"] = auditor.call("get", "audit-events/?page_size=500").content.decode()
        responses["auditor GET offices"] = auditor.call("get", "offices/").content.decode()
        for i, body in enumerate(refusals):
            responses[f"refused one-off #{i + 1}"] = body

    assert len(pdfs) == invoices.count()
    assert any(canary["billing_ref"] in text for text in pdfs.values()), "PDFs show patients by billing ref"

    audit_rows = json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder)
    refusal_rows = AuditEvent.objects.filter(outcome="denied") | AuditEvent.objects.filter(action__icontains="phi")
    assert refusal_rows.count() >= 5, "every PHI-guard refusal is audited"

    log_text = "\n".join(
        [caplog.text]
        + [f"{r.name} {r.levelname} {r.getMessage()} {r.args!r} {r.__dict__}" for r in caplog.records]
        + [command_output.getvalue()]
    )
    assert caplog.records, "the log capture saw the run"

    found = {where: leaks(text) for where, text in {**responses, **pdfs}.items()}
    found["audit rows"] = leaks(audit_rows)
    found["logs and command output"] = leaks(log_text)
    assert {where: hits for where, hits in found.items() if hits} == {}
