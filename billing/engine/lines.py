"""Patient lines, set-based (spec §5): one INSERT … SELECT per draft, and a handful of
statements at finalization to make the lines equal the history, whatever the number of
patients."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Count, Sum
from django.utils import timezone

from billing.engine.labels import PATIENT_LINE_PREFIX
from billing.models import Invoice, LineItem

# Patient-id sets of one office, written non-correlated so that the planner always starts
# from the (office, activated_at) index whatever its statistics say.
_ACTIVE_AT = """SELECT patient_id FROM patients_activationinterval
    WHERE office_id = %s AND activated_at <= %s AND (deactivated_at IS NULL OR deactivated_at > %s)"""
_BILLABLE_IN = """SELECT patient_id FROM patients_activationinterval
    WHERE office_id = %s AND activated_at < %s AND (deactivated_at IS NULL OR deactivated_at > %s)"""


def _dt(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def insert_recurring_lines(*, invoice: Invoice, unit_cents: int) -> int:
    """One `recurring` line per patient active at the instant C.start (one INSERT … SELECT)."""
    start = _dt(invoice.period_start)  # type: ignore[arg-type]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_lineitem
                (invoice_id, kind, patient_id, patient_ref, description, quantity,
                 unit_amount_cents, amount_cents, created_at)
            SELECT %s, 'recurring', p.id, p.billing_ref, %s || p.billing_ref, 1, %s, %s, %s
            FROM patients_activationinterval a
            JOIN patients_patient p ON p.id = a.patient_id
            WHERE a.office_id = %s AND a.activated_at <= %s AND (a.deactivated_at IS NULL OR a.deactivated_at > %s)
            """,
            [
                invoice.pk,
                PATIENT_LINE_PREFIX["recurring"],
                unit_cents,
                unit_cents,
                _dt(timezone.now()),
                invoice.office_id,
                start,
                start,
            ],
        )
        return cursor.rowcount


def reconcile_patient_lines(*, invoice: Invoice, unit_cents: int) -> tuple[int, int]:
    """Make the draft's patient lines equal the billable patients of [start, end) computed
    from the history (spec §5): remove lines of patients never active in the period, add
    the missing ones, and give every line the kind the history gives (recurring iff active
    at the instant C.start). Five statements; all but the insert are no-ops as a rule.
    Returns (added, removed)."""
    office, start, end = invoice.office_id, _dt(invoice.period_start), _dt(invoice.period_end)  # type: ignore[arg-type]
    active_at_start = [office, start, start]
    billable = [office, end, start]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            DELETE FROM billing_lineitem
            WHERE invoice_id = %s AND patient_id IS NOT NULL AND patient_id NOT IN ({_BILLABLE_IN})
            """,  # noqa: S608 - only our own constant fragments are formatted in
            [invoice.pk, *billable],
        )
        removed = cursor.rowcount
        cursor.execute(
            f"""
            INSERT INTO billing_lineitem
                (invoice_id, kind, patient_id, patient_ref, description, quantity,
                 unit_amount_cents, amount_cents, created_at)
            SELECT %s, 'activation', p.id, p.billing_ref, %s || p.billing_ref, 1, %s, %s, %s
            FROM patients_patient p
            WHERE p.id IN ({_BILLABLE_IN})
              AND p.id NOT IN (SELECT patient_id FROM billing_lineitem WHERE invoice_id = %s AND patient_id IS NOT NULL)
            """,  # noqa: S608 - only our own constant fragments are formatted in
            [
                invoice.pk,
                PATIENT_LINE_PREFIX["activation"],
                unit_cents,
                unit_cents,
                _dt(timezone.now()),
                *billable,
                invoice.pk,
            ],
        )
        added = cursor.rowcount
        # Kinds from the history. Lines are inserted as `activation` above; a kind can also
        # disagree when a draft opened at the very instant a patient was deactivated.
        for kind, other, test in (("recurring", "activation", "IN"), ("activation", "recurring", "NOT IN")):
            cursor.execute(
                f"""
                UPDATE billing_lineitem SET kind = %s, description = %s || patient_ref
                WHERE invoice_id = %s AND kind = %s AND patient_id {test} ({_ACTIVE_AT})
                """,  # noqa: S608 - only our own constant fragments are formatted in
                [kind, PATIENT_LINE_PREFIX[kind], invoice.pk, other, *active_at_start],
            )
    return added, removed


def refresh_totals(invoice: Invoice) -> int:
    """Set the totals from the lines (one query); returns the line count."""
    agg = LineItem.objects.filter(invoice=invoice).aggregate(s=Sum("amount_cents"), n=Count("id"))
    invoice.subtotal_cents = invoice.total_cents = agg["s"] or 0  # taxes are out of scope for v1
    return int(agg["n"])


# --- Opening and finalizing ------------------------------------------------------------
