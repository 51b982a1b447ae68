"""The per-cycle evidence archive (issue 12 item 4): one zip per UTC calendar month, every
file listed in MANIFEST.sha256, no PHI, figures as computed by hand (support.build_november)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from audit.models import AuditAnchor, AuditEvent
from billing.tests.support.factories import at
from compliance.evidence import FILES, parse_month
from compliance.services import evidence_export_create
from compliance.tests.support import MonthWorld, build_november, phi_strings, utc
from config.errors import ApplicationError, PermissionDeniedError

pytestmark = pytest.mark.django_db
EXPORTED_AT = utc(2026, 12, 15, 9)
FOLDER = "evidence-2026-11"


@pytest.fixture
def november(client: Client) -> MonthWorld:
    return build_november(client)


def _open(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.testzip() is None
        return {info.filename: z.read(info) for info in z.infolist()}


def _rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def _export() -> dict[str, bytes]:
    with at(EXPORTED_AT):
        name, archive = evidence_export_create(month="2026-11")
    assert name == "evidence-2026-11.zip"
    members = _open(archive)
    assert all(n.startswith(f"{FOLDER}/") for n in members)
    return {n.removeprefix(f"{FOLDER}/"): body for n, body in members.items()}


def test_it_lists_every_file_in_the_manifest_with_its_sha256(november: MonthWorld) -> None:
    files = _export()
    assert set(files) == {*FILES, "README.txt", "MANIFEST.sha256"}
    listed = {}
    for line in files["MANIFEST.sha256"].decode().splitlines():
        digest, name = line.split("  ", 1)  # sha256sum's format: two spaces
        listed[name] = digest
    assert set(listed) == set(files) - {"MANIFEST.sha256"}
    for name, digest in listed.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    readme = files["README.txt"].decode()
    assert "[2026-11-01T00:00:00+00:00, 2026-12-01T00:00:00+00:00)" in readme
    for name in files:
        assert f"- {name}:" in readme, name


def test_it_carries_no_phi_of_the_seeded_patients(november: MonthWorld) -> None:
    files = _export()
    text = "\n".join(body.decode() for body in files.values()).casefold()
    leaked = [s for s in phi_strings() if s.casefold() in text]
    assert leaked == []
    # Billing data never names patients, not even by billing reference.
    billing = "".join(files[n].decode() for n in ("invoices.csv", "office_line_counts.csv", "billing_runs.csv"))
    assert all(p.billing_ref not in billing for p in november.patients)


def test_it_reports_the_months_invoices_and_line_counts_as_computed_by_hand(november: MonthWorld) -> None:
    files = _export()
    invoices = {row["invoice_id"]: row for row in _rows(files["invoices.csv"])}
    # Lakeside's setup fee (October) and Harbor's cycle (finalized December 10) are not November's.
    assert set(invoices) == {str(november.cycle_invoice.pk), str(november.setup_invoice.pk), str(november.one_off.pk)}
    cycle = invoices[str(november.cycle_invoice.pk)]
    assert (cycle["office"], cycle["kind"], cycle["status"]) == ("Lakeside Clinic", "cycle", "open")
    assert (cycle["total_cents"], cycle["line_count"], cycle["patient_line_count"]) == ("4000", "4", "4")
    assert cycle["period_start"] == "2026-10-25T12:00:00+00:00" and cycle["period_end"] == "2026-11-25T00:00:00+00:00"
    assert cycle["number"] == november.cycle_invoice.number
    setup = invoices[str(november.setup_invoice.pk)]
    assert (setup["total_cents"], setup["line_count"], setup["patient_line_count"]) == ("2000", "1", "0")
    one_off = invoices[str(november.one_off.pk)]
    assert (one_off["status"], one_off["total_cents"], one_off["line_count"]) == ("void", "10000", "2")
    assert one_off["voided_at"] == "2026-11-13T10:00:00+00:00"

    counts = {row["office"]: row for row in _rows(files["office_line_counts.csv"])}
    assert counts["Lakeside Clinic"] | {} == {
        "office_id": str(november.lakeside.pk),
        "office": "Lakeside Clinic",
        "currency": "usd",
        "invoices": "1",
        "lines": "4",
        "patient_lines": "4",
        "billed_cents": "4000",
        "voided_invoices": "0",
        "voided_cents": "0",
    }
    harbor = counts["Harbor Clinic"]
    assert (harbor["invoices"], harbor["lines"], harbor["patient_lines"]) == ("2", "3", "0")
    assert (harbor["billed_cents"], harbor["voided_invoices"], harbor["voided_cents"]) == ("2000", "1", "10000")


def test_it_reports_the_months_billing_runs_with_their_figures(november: MonthWorld) -> None:
    runs = _rows(_export()["billing_runs.csv"])
    assert len(runs) == 1  # the December 10 run is not November's
    run = runs[0]
    assert run["started_at"] == "2026-11-25T00:05:00+00:00" and run["status"] == "finished"
    assert (run["offices_due"], run["invoices_finalized"], run["amount_finalized_cents"]) == ("1", "1", "4000")
    assert (run["invoices_opened"], run["error_count"]) == ("1", "0")


def test_it_includes_the_chain_head_anchors_and_a_passing_verification(november: MonthWorld) -> None:
    files = _export()
    chain = json.loads(files["audit_chain.json"])
    last = AuditEvent.objects.filter(seq__isnull=False).order_by("-seq").first()
    assert last is not None and chain["head"]["seq"] == last.seq and chain["head"]["entry_hash"] == last.entry_hash
    anchor = AuditAnchor.objects.get(anchored_at__month=11)
    assert chain["anchors"] == [
        {"seq": anchor.seq, "entry_hash": anchor.entry_hash, "anchored_at": "2026-11-26T00:00:00+00:00"}
    ]
    month_events = AuditEvent.objects.filter(ts__gte=utc(2026, 11, 1), ts__lt=utc(2026, 12, 1))
    assert chain["month_entries"] == month_events.count() and chain["month_unsealed"] == 0
    first = month_events.order_by("seq").first()
    assert first is not None and chain["month_first_sealed"]["entry_hash"] == first.entry_hash
    verify = json.loads(files["audit_verify.json"])
    assert verify["ok"] is True and verify["break"] is None
    assert verify["head_seq"] == last.seq and verify["anchors_checked"] == 1


def test_it_includes_reviews_refusals_logins_and_permission_changes_of_the_month(november: MonthWorld) -> None:
    files = _export()
    reviews = _rows(files["access_reviews.csv"])
    assert [r["review_id"] for r in reviews] == [str(november.review.pk)]
    assert reviews[0]["export_sha256"] == november.review.export_sha256 and reviews[0]["reviewer"] == "root"

    refusals = _rows(files["phi_guard_refusals.csv"])
    assert [(r["action"], r["outcome"], r["reason"]) for r in refusals] == [
        ("phi_guard.refused", "denied", "last_name in lines[0].description")
    ]
    logins = [(r["action"], r["outcome"]) for r in _rows(files["logins.csv"])]
    assert logins == [("auth.login", "success"), ("auth.logout", "success"), ("auth.login_failed", "denied")]
    changes = _rows(files["permission_changes.csv"])
    assert [(r["action"], r["office_id"]) for r in changes] == [("permission.granted", str(november.lakeside.pk))]

    every = _rows(files["audit_events.csv"])
    assert len(every) == AuditEvent.objects.filter(ts__gte=utc(2026, 11, 1), ts__lt=utc(2026, 12, 1)).count()
    assert all("2026-11-01" <= r["ts"] < "2026-12-01" for r in every)


def test_it_audits_the_export_as_a_read_with_the_archives_hash(november: MonthWorld) -> None:
    with at(EXPORTED_AT):
        _, archive = evidence_export_create(month="2026-11", actor=november.operator)
    entry = AuditEvent.objects.get(action="evidence.exported")
    assert entry.actor_label == "root" and entry.data["month"] == "2026-11"
    assert entry.data["sha256"] == hashlib.sha256(archive).hexdigest()


def test_it_writes_the_archive_from_the_command(november: MonthWorld, tmp_path: Path) -> None:
    out = tmp_path / "nov.zip"
    with at(EXPORTED_AT):
        call_command("evidence_export", month="2026-11", out=str(out), stdout=io.StringIO())
        call_command("evidence_export", month="2026-11", out=str(tmp_path), stdout=io.StringIO())
    assert f"{FOLDER}/MANIFEST.sha256" in _open(out.read_bytes())
    assert (tmp_path / "evidence-2026-11.zip").exists()
    with pytest.raises(CommandError, match="not a month"):
        call_command("evidence_export", month="2026-13", out=str(out))


def test_it_serves_the_archive_from_the_console_and_refuses_bad_months(november: MonthWorld, client: Client) -> None:
    url = "/admin/compliance/accessreview/evidence/"
    with at(EXPORTED_AT):
        client.force_login(november.operator)
        page = client.get(url)
        assert page.status_code == 200 and b"Download the archive" in page.content
        response = client.get(url, {"month": "2026-11"})
        assert response.status_code == 200 and response["Content-Type"] == "application/zip"
        assert 'filename="evidence-2026-11.zip"' in response["Content-Disposition"]
        assert f"{FOLDER}/README.txt" in _open(response.content)
        bad = client.get(url, {"month": "November"})
        assert bad.status_code == 400 and b"is not a month" in bad.content
        future = client.get(url, {"month": "2027-01"})
        assert future.status_code == 400 and b"has not started yet" in future.content
    assert AuditEvent.objects.filter(action="evidence.exported", actor_label="root").count() == 1


def test_it_takes_the_month_as_the_utc_calendar_month() -> None:
    month = parse_month("2026-12")
    assert (month.start, month.end) == (utc(2026, 12, 1), utc(2027, 1, 1))
    for bad in ("2026-13", "26-11", "2026/11", "", "2026-1"):
        with pytest.raises(ApplicationError):
            parse_month(bad)


def test_it_refuses_users_who_are_neither_operators_nor_auditors(django_user_model: type) -> None:
    user = django_user_model.objects.create_user(username="staff-only", password="x")
    with pytest.raises(PermissionDeniedError):
        evidence_export_create(month="2026-11", actor=user)
