"""Compliance writes (issue 12, items 3, 4, 9): access reviews, the evidence export (a
read, audited), the retention sweep and PHI offboarding of an office that leaves."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models import F, Max, Value
from django.db.models.functions import Concat
from django.utils import timezone

from audit.export import csv_cell, stream_csv
from audit.models import AuditEvent, Outcome
from audit.services import audit_record
from billing.phi_guard import PhiIndex, PhiRefused
from compliance.evidence import Month, evidence_archive, parse_month
from compliance.models import AccessReview
from compliance.selectors import may_review, past_retention, retention_cutoff
from config.errors import ApplicationError, ConflictError, PermissionDeniedError
from offices.models import Office, SubscriptionStatus
from patients.models import ActivationInterval, Patient

# --- access reviews (45 CFR 164.308(a)(1)(ii)(D)) ---------------------------------------

FINDINGS_MAX = 10_000


def _phi_index_all_offices() -> PhiIndex:
    """One PHI index over every office's patients: a review spans the whole trail. Offices'
    own names and billing emails are ours (as in the per-office guard)."""
    offices = Office.objects.values_list("name", "billing_email")
    rows = Patient.objects.values_list(
        "first_name", "last_name", "date_of_birth", "mrn", "email", "phone", "billing_ref"
    ).iterator(chunk_size=2000)
    return PhiIndex.from_rows(office_id=0, rows=rows, own=[part for pair in offices for part in pair])


def access_review_check_text(
    *, findings: str, follow_ups: str, actor: Any, period_start: datetime, period_end: datetime
) -> None:
    """Refuse findings or follow-ups that carry PHI (spec §9 PHI guard); the refusal is
    audited (`phi_guard.refused`, denied) and names the field and kind, never the value."""
    try:
        _phi_index_all_offices().check(
            {"findings": findings, "follow_ups": follow_ups}, trusted=[period_start, period_end]
        )
    except PhiRefused as exc:
        audit_record(
            action="phi_guard.refused",
            actor=actor,
            target_type=AccessReview._meta.label,
            outcome=Outcome.DENIED,
            reason=f"{exc.kind} in {exc.field_name}",
            data={"context": "access_review", "field": exc.field_name, "kind": exc.kind},
        )
        raise


def _validate_period(period_start: datetime, period_end: datetime, now: datetime) -> None:
    for name, value in (("period_start", period_start), ("period_end", period_end)):
        if value.tzinfo is None:
            raise ApplicationError(f"'{name}' needs a time zone.", {"field": name})
    if period_end <= period_start:
        raise ApplicationError("The period must end after it starts.", {"field": "period_end"})
    if period_end > now:
        raise ApplicationError(
            "The period may not end in the future: only what happened can be reviewed.", {"field": "period_end"}
        )


def access_review_record(
    *,
    reviewer: Any,
    period_start: datetime,
    period_end: datetime,
    findings: str,
    follow_ups: str = "",
    corrects: AccessReview | None = None,
) -> AccessReview:
    """Record a review of the audit trail over [period_start, period_end) by `reviewer`,
    with the period's audit CSV (audit/export.py) attached and its SHA-256; append-only,
    audited (`access_review.recorded`), findings PHI-guarded (45 CFR 164.308(a)(1)(ii)(D))."""
    if not may_review(reviewer):
        raise PermissionDeniedError("Only operators and compliance auditors may record access reviews.")
    now = timezone.now()
    _validate_period(period_start, period_end, now)
    findings, follow_ups = (findings or "").strip(), (follow_ups or "").strip()
    if not findings:
        raise ApplicationError(
            "Findings are required (write 'No findings.' if there were none).", {"field": "findings"}
        )
    for name, text in (("findings", findings), ("follow_ups", follow_ups)):
        if len(text) > FINDINGS_MAX:
            raise ApplicationError(f"'{name}' is longer than {FINDINGS_MAX} characters.", {"field": name})
    access_review_check_text(
        findings=findings, follow_ups=follow_ups, actor=reviewer, period_start=period_start, period_end=period_end
    )
    return _access_review_create(
        reviewer=reviewer,
        period_start=period_start,
        period_end=period_end,
        findings=findings,
        follow_ups=follow_ups,
        corrects=corrects,
        now=now,
    )


@transaction.atomic
def _access_review_create(
    *,
    reviewer: Any,
    period_start: datetime,
    period_end: datetime,
    findings: str,
    follow_ups: str,
    corrects: AccessReview | None,
    now: datetime,
) -> AccessReview:
    # The rows are fixed before the review's own entry is written, as in the API export.
    boundary = AuditEvent.objects.aggregate(top=Max("id"))["top"] or 0
    events = AuditEvent.objects.filter(ts__gte=period_start, ts__lt=period_end, id__lte=boundary)
    body = "".join(stream_csv(events)).encode()
    review = AccessReview.objects.create(
        reviewer=reviewer,
        reviewer_label=reviewer.get_username(),
        reviewed_at=now,
        period_start=period_start,
        period_end=period_end,
        findings=findings,
        follow_ups=follow_ups,
        corrects=corrects,
        export_rows=events.count(),
        export_last_event_id=boundary,
        export_sha256=hashlib.sha256(body).hexdigest(),
        export_csv_gz=gzip.compress(body, mtime=0),
    )
    audit_record(
        action="access_review.recorded",
        actor=reviewer,
        target=review,
        data={
            "period_start": period_start.astimezone(UTC).isoformat(),
            "period_end": period_end.astimezone(UTC).isoformat(),
            "export_rows": review.export_rows,
            "export_sha256": review.export_sha256,
            "corrects": corrects.pk if corrects is not None else None,
        },
    )
    return review


def access_review_export_read(*, review: AccessReview, actor: Any) -> bytes:
    """The CSV attached to a review, as it was reviewed (audited as a read, spec §9)."""
    if not may_review(actor):
        raise PermissionDeniedError("Only operators and compliance auditors may read access reviews.")
    body = gzip.decompress(bytes(review.export_csv_gz))
    audit_record(
        action="access_review.export_downloaded",
        actor=actor,
        target=review,
        data={"export_sha256": review.export_sha256, "rows": review.export_rows},
    )
    return body


# --- evidence export (issue 12 item 4) ---------------------------------------------------


def evidence_export_create(*, month: str | Month, actor: Any = None) -> tuple[str, bytes]:
    """The month's evidence archive (zip, UTC calendar month) and its file name; audited as a
    read (`evidence.exported`, with the archive's SHA-256). Not one transaction on purpose:
    the verifier reads the chain in its own read-only snapshot (audit/verify.py)."""
    if actor is not None and not may_review(actor):
        raise PermissionDeniedError("Only operators and compliance auditors may export compliance evidence.")
    period = parse_month(month) if isinstance(month, str) else month
    now = timezone.now()
    if period.start > now:
        raise ApplicationError(f"{period.label} has not started yet.", {"field": "month"})
    boundary = AuditEvent.objects.aggregate(top=Max("id"))["top"] or 0
    archive = evidence_archive(period, generated_at=now, boundary=boundary)
    audit_record(
        action="evidence.exported",
        actor=actor,
        data={
            "month": period.label,
            "last_event_id": boundary,
            "sha256": hashlib.sha256(archive).hexdigest(),
            "bytes": len(archive),
        },
    )
    return f"evidence-{period.label}.zip", archive


# --- retention (45 CFR 164.316(b)(2)) ----------------------------------------------------


@dataclass(frozen=True)
class RetentionReport:
    now: datetime
    cutoff: datetime
    past_retention: dict[str, int]  # kept: reported only
    deleted: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


@transaction.atomic
def retention_sweep(*, dry_run: bool = False) -> RetentionReport:
    """The six-year rule as a job: report required documentation older than six years
    (audit trail, invoices and lines, runs, plan changes, activation history, Stripe events,
    access reviews — never deleted by the application), and delete only what is no
    documentation at all: expired sessions and expired API tokens (dead credentials).
    Audited (`retention.swept`)."""
    from knox.models import AuthToken

    now = timezone.now()
    cutoff = retention_cutoff(now)
    past = past_retention(cutoff=cutoff)
    expired = {
        "expired_sessions": Session.objects.filter(expire_date__lt=now),
        "expired_api_tokens": AuthToken.objects.filter(expiry__lt=now),
    }
    deleted = {name: qs.count() for name, qs in expired.items()}
    if not dry_run:
        for qs in expired.values():
            qs.delete()
    audit_record(
        action="retention.swept",
        data={
            "cutoff": cutoff.astimezone(UTC).isoformat(),
            "past_retention_kept": past,
            "deleted": {} if dry_run else deleted,
            "would_delete": deleted if dry_run else {},
            "dry_run": dry_run,
        },
    )
    return RetentionReport(now=now, cutoff=cutoff, past_retention=past, deleted=deleted, dry_run=dry_run)


# --- PHI offboarding (issue 12 item 9) ---------------------------------------------------

ERASED_MRN_PREFIX = "erased:"
# DateField is NOT NULL: the tombstone birth date, the same for every erased patient.
ERASED_BIRTH_DATE = date(1900, 1, 1)
# Refused while any of these: the office is still a customer, its patients still billed.
SUBSCRIBED = (
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.PAST_DUE,
    SubscriptionStatus.SUSPENDED,
)
PHI_EXPORT_FIELDS = ("billing_ref", *Patient.PHI_FIELDS, "created_at")


@dataclass(frozen=True)
class OffboardResult:
    office_id: int
    erased: int
    already_erased: int
    export_csv: bytes | None  # PHI: for the office only, never stored or logged here


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


def _phi_csv(patients: list[Patient]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*PHI_EXPORT_FIELDS, "activations"])
    for p in patients:
        spans = [f"{_iso(i.activated_at)}/{_iso(i.deactivated_at)}" for i in p.intervals.all()]
        writer.writerow([csv_cell(getattr(p, name)) for name in PHI_EXPORT_FIELDS] + [csv_cell(";".join(spans))])
    return buffer.getvalue().encode()


def is_erased(patient: Patient) -> bool:
    return patient.mrn.startswith(ERASED_MRN_PREFIX)


@transaction.atomic
def office_offboard_phi(
    *,
    office: Office,
    actor: Any = None,
    export: bool = False,
    export_sink: Callable[[bytes], None] | None = None,
) -> OffboardResult:
    """Erase the identifying and clinical fields of a departed office's patients (names, birth
    date, MRN, email, phone → a tombstone), optionally exporting them first as a CSV for the
    office; billing references, activation history, invoices and lines are kept (45 CFR
    164.316(b)(2) keeps the billing record; 164.502(b) minimum necessary drops the rest).
    Refused while the office still has a subscription. Audited, without PHI.

    `export_sink`, when given, receives the CSV before anything is erased; if it raises
    (a file that cannot be written), the erasure is rolled back."""
    locked = Office.objects.select_for_update().get(pk=office.pk)
    if locked.subscription_status in SUBSCRIBED:
        raise ConflictError(
            f"Office '{locked.name}' still has a {locked.subscription_status} subscription: cancel it "
            "before erasing its patients' information.",
            {"field": "office", "subscription_status": locked.subscription_status},
        )
    patients = Patient.objects.filter(office_id=locked.pk).select_for_update().order_by("pk")
    pending = patients.exclude(mrn__startswith=ERASED_MRN_PREFIX)
    already = patients.filter(mrn__startswith=ERASED_MRN_PREFIX).count()
    export_csv: bytes | None = None
    if export:
        rows = list(pending.prefetch_related("intervals"))
        export_csv = _phi_csv(rows)
        if export_sink is not None:
            export_sink(export_csv)
        audit_record(
            action="patient_phi.exported",
            actor=actor,
            target=locked,
            office_id=locked.pk,
            reason="office offboarding: patient records handed to the office before erasure",
            data={"patients": len(rows)},
        )
    # One UPDATE: Patient rows carry no guard trigger; activation intervals (guarded,
    # append-only) and billing lines are not touched.
    erased = pending.update(
        first_name="",
        last_name="",
        date_of_birth=ERASED_BIRTH_DATE,
        mrn=Concat(Value(ERASED_MRN_PREFIX), F("billing_ref")),
        email="",
        phone="",
    )
    audit_record(
        action="office.phi_offboarded",
        actor=actor,
        target=locked,
        office_id=locked.pk,
        data={
            "patients_erased": erased,
            "already_erased": already,
            "exported_first": export,
            "activation_intervals_kept": ActivationInterval.objects.filter(office_id=locked.pk).count(),
        },
    )
    return OffboardResult(office_id=locked.pk, erased=erased, already_erased=already, export_csv=export_csv)
