"""The per-cycle evidence archive (issue 12, item 4): one zip for one UTC calendar month
that a compliance auditor can hand over, with a `MANIFEST.sha256` (sha256sum format) and
a README.txt that says what each file is.

Only reads. Billing data appears by office, invoice number and counts; patients are never
named, not even by billing reference (45 CFR 164.502(b), minimum necessary). The audit
files are the audit trail's own export (`audit/export.py`), whose rows hold no PHI."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet

from audit.export import csv_cell, stream_csv
from audit.models import AuditAnchor, AuditChainHead, AuditEvent
from audit.verify import verify_chain
from billing.models import PATIENT_LINE_KINDS, BillingRun, Invoice, InvoiceStatus
from compliance.models import AccessReview
from config.errors import ApplicationError

LOGIN_ACTIONS = ("auth.login", "auth.logout", "auth.login_failed")
PERMISSION_ACTIONS = (
    "permission.granted",
    "permission.revoked",
    "user.created",
    "user.operator_status_changed",
    "user.groups_changed",
    "user.permissions_changed",
)
PHI_REFUSAL_ACTIONS = ("phi_guard.refused",)

# File name → what it is (README.txt is written from this, in this order).
FILES: dict[str, str] = {
    "invoices.csv": (
        "Every invoice finalized in the month (drafts never; voided ones included with their status): "
        "number, office, kind, status, period, currency, subtotal and total in cents, when finalized, "
        "paid and voided (UTC), its line count and how many of its lines bill a patient. "
        "No patient is named, not even by billing reference."
    ),
    "office_line_counts.csv": (
        "Per office and currency: the invoices of invoices.csv, their lines, their patient lines "
        "(recurring + activation) and the total billed in cents (voided invoices counted apart)."
    ),
    "billing_runs.csv": (
        "Every billing run started in the month with its figures: as-of instant, trigger, status, "
        "offices due and done, invoices finalized and opened, lines created, amount finalized (cents), errors."
    ),
    "audit_chain.json": (
        "The audit chain at export time: head seq and hash, the first and last sealed entry of the "
        "month (seq and entry_hash), and every anchor (head copied out of the table) taken in the month."
    ),
    "audit_verify.json": (
        "The result of the audit chain verifier (audit/verify.py:verify_chain, as `manage.py "
        "verify_audit_chain`) run at export time over the whole chain: ok or the first break."
    ),
    "access_reviews.csv": (
        "The information-system activity reviews (45 CFR 164.308(a)(1)(ii)(D)) recorded in the month "
        "or covering part of it: reviewer, when, period, findings, follow-ups, and the SHA-256 and row "
        "count of the audit export attached to each."
    ),
    "phi_guard_refusals.csv": (
        "Audit entries of the month for refusals by the PHI guard (action phi_guard.refused, outcome denied): "
        "what was refused and where, never the refused value."
    ),
    "logins.csv": "Audit entries of the month for logins, logouts and failed logins (auth.*).",
    "permission_changes.csv": (
        "Audit entries of the month for permission changes: office roles granted and revoked, users "
        "created, operator status, group membership (compliance auditors) and direct permissions changed."
    ),
    "audit_events.csv": "Every audit entry of the month (the audit trail's CSV export, audit/export.py).",
}


@dataclass(frozen=True)
class Month:
    """A UTC calendar month: [start, end)."""

    label: str  # "2026-11"
    start: datetime
    end: datetime


def parse_month(value: str) -> Month:
    """`YYYY-MM` as the UTC calendar month; a 400 naming the problem otherwise."""
    raw = (value or "").strip()
    try:
        year_text, month_text = raw.split("-")
        if len(year_text) != 4 or len(month_text) != 2:
            raise ValueError
        start = datetime(int(year_text), int(month_text), 1, tzinfo=UTC)
    except ValueError:
        raise ApplicationError(f"'{raw[:20]}' is not a month; use YYYY-MM, e.g. 2026-11.", {"field": "month"}) from None
    end = datetime(start.year + 1, 1, 1, tzinfo=UTC) if start.month == 12 else start.replace(month=start.month + 1)
    return Month(label=f"{start:%Y-%m}", start=start, end=end)


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


def _csv(rows: Iterable[Iterable[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows([csv_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue().encode()


def _audit_csv(queryset: QuerySet[AuditEvent]) -> bytes:
    return "".join(stream_csv(queryset)).encode()


def month_invoices(month: Month) -> QuerySet[Invoice]:
    """Invoices finalized in the month (a draft has no finalized_at), with line counts."""
    return (
        Invoice.objects.filter(finalized_at__gte=month.start, finalized_at__lt=month.end)
        .select_related("office")
        .annotate(
            line_count=Count("lines"),
            patient_line_count=Count("lines", filter=Q(lines__kind__in=PATIENT_LINE_KINDS)),
        )
        .order_by("finalized_at", "pk")
    )


def invoices_csv(invoices: list[Invoice]) -> bytes:
    header = [
        "number", "invoice_id", "office_id", "office", "kind", "status", "is_setup_fee", "period_start",
        "period_end", "currency", "subtotal_cents", "total_cents", "finalized_at", "paid_at", "voided_at",
        "line_count", "patient_line_count",
    ]  # fmt: skip
    rows: list[list[Any]] = [header]
    for inv in invoices:
        rows.append(
            [
                inv.number, inv.pk, inv.office_id, inv.office.name, inv.kind, inv.status, inv.is_setup_fee,
                _iso(inv.period_start), _iso(inv.period_end), inv.currency, inv.subtotal_cents, inv.total_cents,
                _iso(inv.finalized_at), _iso(inv.paid_at), _iso(inv.voided_at),
                inv.line_count, inv.patient_line_count,  # type: ignore[attr-defined]
            ]
        )  # fmt: skip
    return _csv(rows)


def office_line_counts(invoices: list[Invoice]) -> list[dict[str, Any]]:
    """Per (office, currency): invoices, lines, patient lines, total billed (void apart)."""
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for inv in invoices:
        key = (inv.office_id, inv.currency)
        group = groups.setdefault(
            key,
            {
                "office_id": inv.office_id,
                "office": inv.office.name,
                "currency": inv.currency,
                "invoices": 0,
                "lines": 0,
                "patient_lines": 0,
                "billed_cents": 0,
                "voided_invoices": 0,
                "voided_cents": 0,
            },
        )
        group["invoices"] += 1
        group["lines"] += inv.line_count  # type: ignore[attr-defined]
        group["patient_lines"] += inv.patient_line_count  # type: ignore[attr-defined]
        if inv.status == InvoiceStatus.VOID:
            group["voided_invoices"] += 1
            group["voided_cents"] += inv.total_cents
        else:
            group["billed_cents"] += inv.total_cents
    return [groups[key] for key in sorted(groups)]


def _dict_csv(rows: list[dict[str, Any]], header: list[str]) -> bytes:
    return _csv([header, *([row[name] for name in header] for row in rows)])


def billing_runs_csv(month: Month) -> bytes:
    header = [
        "run_id", "started_at", "finished_at", "as_of", "trigger", "status", "offices_due", "offices_done",
        "invoices_finalized", "invoices_opened", "lines_created", "amount_finalized_cents", "error_count",
    ]  # fmt: skip
    rows: list[list[Any]] = [header]
    for run in BillingRun.objects.filter(started_at__gte=month.start, started_at__lt=month.end).order_by("pk"):
        rows.append(
            [
                run.pk, _iso(run.started_at), _iso(run.finished_at), _iso(run.as_of), run.trigger, run.status,
                run.offices_due, run.offices_done, run.invoices_finalized, run.invoices_opened,
                run.lines_created, run.amount_finalized_cents, run.error_count,
            ]
        )  # fmt: skip
    return _csv(rows)


def chain_summary(month: Month, *, boundary: int) -> dict[str, Any]:
    head = AuditChainHead.objects.filter(pk=1).first()
    in_month = AuditEvent.objects.filter(ts__gte=month.start, ts__lt=month.end, id__lte=boundary)
    sealed = in_month.filter(seq__isnull=False).aggregate(first=Min("seq"), last=Max("seq"))

    def entry(seq: int | None) -> dict[str, Any] | None:
        if seq is None:
            return None
        event = AuditEvent.objects.filter(seq=seq).first()
        return {"seq": seq, "entry_hash": event.entry_hash if event else None, "ts": _iso(event.ts) if event else None}

    anchors = AuditAnchor.objects.filter(anchored_at__gte=month.start, anchored_at__lt=month.end).order_by("seq", "pk")
    return {
        "head": {
            "seq": head.seq if head else 0,
            "entry_hash": head.entry_hash if head else None,
            "updated_at": _iso(head.updated_at) if head else None,
        },
        "month_entries": in_month.count(),
        "month_unsealed": in_month.filter(seq__isnull=True).count(),
        "month_first_sealed": entry(sealed["first"]),
        "month_last_sealed": entry(sealed["last"]),
        "anchors": [{"seq": a.seq, "entry_hash": a.entry_hash, "anchored_at": _iso(a.anchored_at)} for a in anchors],
    }


def verify_summary() -> dict[str, Any]:
    report = verify_chain()
    return {
        "ok": report.ok,
        "sealed_entries_checked": report.sealed,
        "last_seq": report.last_seq,
        "last_hash": report.last_hash,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "anchors_checked": report.anchors_checked,
        "unsealed": report.unsealed,
        "stale_unsealed": report.stale_unsealed,
        "break": None
        if report.broken is None
        else {
            "kind": report.broken.kind.value,
            "seq": report.broken.seq,
            "entry_id": report.broken.entry_id,
            "description": report.broken.describe(),
        },
    }


def month_reviews(month: Month) -> QuerySet[AccessReview]:
    """Reviews recorded in the month, or whose reviewed period overlaps it."""
    return AccessReview.objects.filter(
        Q(reviewed_at__gte=month.start, reviewed_at__lt=month.end)
        | Q(period_start__lt=month.end, period_end__gt=month.start)
    ).order_by("reviewed_at", "pk")


def access_reviews_csv(month: Month) -> bytes:
    header = [
        "review_id", "reviewed_at", "reviewer", "period_start", "period_end", "findings", "follow_ups",
        "corrects_review_id", "export_rows", "export_sha256",
    ]  # fmt: skip
    rows: list[list[Any]] = [header]
    for r in month_reviews(month):
        rows.append(
            [
                r.pk, _iso(r.reviewed_at), r.reviewer_label, _iso(r.period_start), _iso(r.period_end), r.findings,
                r.follow_ups, r.corrects_id or "", r.export_rows, r.export_sha256,
            ]
        )  # fmt: skip
    return _csv(rows)


def _readme(month: Month, generated_at: datetime, names: list[str]) -> bytes:
    lines = [
        f"Compliance evidence for {month.label}",
        "",
        f"Period: the UTC calendar month [{_iso(month.start)}, {_iso(month.end)}).",
        f"Generated: {_iso(generated_at)} (UTC) by manage.py evidence_export or the console.",
        "",
        "Billing data names offices and invoices and counts patient lines; it never names a patient",
        "(no names, MRNs, birth dates or contacts, not even billing references). Amounts are integer",
        "cents with their currency. Times are ISO 8601 in UTC. CSV cells that a spreadsheet would",
        "run as a formula are prefixed with a single quote.",
        "",
        "Check the files with: sha256sum -c MANIFEST.sha256",
        "",
        "Files:",
    ]
    for name in names:
        lines.append(f"- {name}: {FILES[name]}")
    lines.append("- README.txt: this file.")
    lines.append("- MANIFEST.sha256: the SHA-256 of every other file, in sha256sum format.")
    return ("\n".join(lines) + "\n").encode()


def evidence_files(month: Month, *, generated_at: datetime, boundary: int) -> dict[str, bytes]:
    """Every file of the archive but the manifest, by name (audit entries up to `boundary`)."""
    invoices = list(month_invoices(month))
    events = AuditEvent.objects.filter(ts__gte=month.start, ts__lt=month.end, id__lte=boundary)
    count_header = [
        "office_id", "office", "currency", "invoices", "lines", "patient_lines", "billed_cents",
        "voided_invoices", "voided_cents",
    ]  # fmt: skip
    files: dict[str, bytes] = {
        "invoices.csv": invoices_csv(invoices),
        "office_line_counts.csv": _dict_csv(office_line_counts(invoices), count_header),
        "billing_runs.csv": billing_runs_csv(month),
        "audit_chain.json": (json.dumps(chain_summary(month, boundary=boundary), indent=2) + "\n").encode(),
        "audit_verify.json": (json.dumps(verify_summary(), indent=2) + "\n").encode(),
        "access_reviews.csv": access_reviews_csv(month),
        "phi_guard_refusals.csv": _audit_csv(events.filter(action__in=PHI_REFUSAL_ACTIONS)),
        "logins.csv": _audit_csv(events.filter(action__in=LOGIN_ACTIONS)),
        "permission_changes.csv": _audit_csv(events.filter(action__in=PERMISSION_ACTIONS)),
        "audit_events.csv": _audit_csv(events),
    }
    files["README.txt"] = _readme(month, generated_at, list(files))
    return files


def manifest(files: dict[str, bytes]) -> bytes:
    """sha256sum format: `<64 hex>  <name>` per line."""
    return "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n" for name, body in files.items()).encode()


def evidence_archive(month: Month, *, generated_at: datetime, boundary: int) -> bytes:
    """The zip: the month's files under `evidence-<month>/`, then MANIFEST.sha256."""
    files = evidence_files(month, generated_at=generated_at, boundary=boundary)
    files["MANIFEST.sha256"] = manifest(files)
    folder = f"evidence-{month.label}"
    stamp = generated_at.astimezone(UTC).timetuple()[:6]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, body in files.items():
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, body)
    return out.getvalue()
