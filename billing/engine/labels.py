"""What an invoice line says, in one place: the local lines, the PDF and the items sent to
Stripe all read their wording from here. Labels carry billing references and plan names
only, never PHI (spec §9)."""

from __future__ import annotations

from billing.models import LineKind, Plan

# A patient line is this prefix followed by the patient's billing reference. The SQL of
# billing/engine/lines.py passes these as parameters.
PATIENT_LINE_PREFIX: dict[str, str] = {
    LineKind.RECURRING: "Active patient ",
    LineKind.ACTIVATION: "Patient activated during the period ",
}

# Patient lines of one kind and unit price travel to Stripe as one item (spec §8).
PATIENT_GROUP_LABEL: dict[str, str] = {
    LineKind.RECURRING: "Active patients",
    LineKind.ACTIVATION: "Patients activated during the period",
}


def patient_line_label(kind: str, billing_ref: str) -> str:
    return PATIENT_LINE_PREFIX[kind] + billing_ref


def setup_fee_label(plan: Plan) -> str:
    return f"Setup fee — {plan.name}"


def minimum_adjustment_label(plan: Plan) -> str:
    return f"Monthly minimum adjustment ({plan.name})"
