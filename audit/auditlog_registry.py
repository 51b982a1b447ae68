"""Model diffs by django-auditlog, complementing the domain AuditEvent trail (spec §9).

auditlog records *what* changed on a row (before/after values); AuditEvent, written by the
services, records *why*. auditlog's table is not hash-chained nor append-only and it
misses `update()`/bulk writes, so the AuditEvent chain stays the record of authority.

PHI fields of Patient are excluded (not masked: a masked value still leaks its length and
its change). Models are looked up through the app registry, so the audit app imports no
other app (it is a sink)."""

from __future__ import annotations

from typing import Any

from django.apps import apps

# The clinical fields of patients.Patient (spec §10); unioned with the model's own
# PHI_FIELDS so a PHI field added there is excluded here too.
PATIENT_PHI_FIELDS = ("first_name", "last_name", "date_of_birth", "mrn", "email", "phone")

# Invoices: the status and its timestamps (amounts live in the frozen lines and the
# domain trail; draft totals change with every activation and would only add noise).
INVOICE_STATUS_FIELDS = (
    "status",
    "number",
    "finalized_at",
    "due_at",
    "paid_at",
    "voided_at",
    "marked_uncollectible_at",
    "past_due_at",
)


def _reverse_relations(model: Any) -> set[str]:
    # Other tables' foreign keys to this model ("patients", "invoices"): auditlog would log
    # them as a meaningless "<model>.None" on every create.
    return {f.name for f in model._meta.get_fields() if f.auto_created and not f.concrete}


def patient_excluded_fields() -> list[str]:
    patient = apps.get_model("patients", "Patient")
    return sorted(set(PATIENT_PHI_FIELDS) | set(getattr(patient, "PHI_FIELDS", ())))


def register_models() -> None:
    """Register our models with auditlog (called once from AuditConfig.ready)."""
    from auditlog.registry import auditlog

    registrations: list[tuple[str, dict[str, list[str]]]] = [
        ("offices.Company", {}),
        ("offices.Office", {}),
        ("billing.Plan", {}),
        ("billing.Invoice", {"include_fields": list(INVOICE_STATUS_FIELDS)}),
        ("patients.Patient", {"exclude_fields": patient_excluded_fields()}),
    ]
    for label, options in registrations:
        model = apps.get_model(label)
        if "include_fields" not in options:
            options["exclude_fields"] = sorted(set(options.get("exclude_fields", [])) | _reverse_relations(model))
        if not auditlog.contains(model):
            auditlog.register(model, **options)
