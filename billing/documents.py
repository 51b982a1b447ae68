"""Invoice documents: HTML template → PDF (weasyprint). No PHI: patients by billing ref.
Dates are the office's local dates (billing/dates.py).

The first page reads as the office and Stripe read the invoice: one summary line per group
("3 active patients × 4.50 USD"), the other lines one each, the amount due or paid, the
due date and how to pay; the patients behind each group follow as an appendix, by billing
reference. Pages are numbered ("Page 2 of 3")."""

from __future__ import annotations

from django.conf import settings
from django.template.loader import render_to_string

from billing.dates import local_day, local_minute
from billing.engine.labels import PATIENT_GROUP_LABEL
from billing.models import PATIENT_LINE_KINDS, Invoice, InvoiceStatus
from billing.money import format_cents
from billing.selectors import patient_line_groups


def money(cents: int, currency: str) -> str:
    """How the invoice document writes an amount: "1,234.50 USD"."""
    return format_cents(cents, currency, symbol=False)


def invoice_pdf(invoice: Invoice) -> bytes:
    """Render an invoice as a PDF from templates/billing/invoice.html (spec §9, §10)."""
    from weasyprint import HTML  # imported lazily: it loads pango at import time

    tz = invoice.office.timezone
    groups = patient_line_groups(invoice)
    summary = [
        {
            "description": f"{PATIENT_GROUP_LABEL[g['kind']]}: {g['n']} × "
            f"{money(g['unit_amount_cents'], invoice.currency)}",
            "amount": money(g["n"] * g["unit_amount_cents"], invoice.currency),
        }
        for g in groups
    ] + [
        {
            "description": line.description
            if line.quantity == 1
            else f"{line.description}: {line.quantity} × {money(line.unit_amount_cents, invoice.currency)}",
            "amount": money(line.amount_cents, invoice.currency),
        }
        for line in invoice.lines.exclude(kind__in=PATIENT_LINE_KINDS).order_by("id")
    ]
    settled = invoice.status in (InvoiceStatus.PAID, InvoiceStatus.VOID)
    collection = (
        "The card or account on file is charged automatically; nothing to do."
        if invoice.office.collection_method == "charge_automatically"
        else f"Pay by bank transfer or card from the payment link sent to {invoice.office.billing_email}, "
        f"quoting the invoice number."
    )
    lines = [
        {
            "kind": line.kind.replace("_", " "),
            "description": line.description,
            "patient_ref": line.patient_ref,
            "quantity": line.quantity,
            "unit": money(line.unit_amount_cents, invoice.currency),
            "amount": money(line.amount_cents, invoice.currency),
        }
        for line in invoice.lines.filter(kind__in=PATIENT_LINE_KINDS).order_by("kind", "patient_ref", "id")
    ]
    html = render_to_string(
        "billing/invoice.html",
        {
            "invoice": invoice,
            "office": invoice.office,
            "vendor": settings.BILLING_VENDOR,
            "is_draft": invoice.status == "draft",
            "lines": lines,
            "zone": tz,
            "period": (
                f"{local_minute(invoice.period_start, tz)} to {local_minute(invoice.period_end, tz)}"
                if invoice.period_start and invoice.period_end
                else None
            ),
            "issued": local_day(invoice.finalized_at, tz) if invoice.finalized_at else None,
            "due": local_day(invoice.due_at, tz) if invoice.due_at else None,
            "paid": local_day(invoice.paid_at, tz) if invoice.paid_at else None,
            "subtotal": money(invoice.subtotal_cents, invoice.currency),
            "total": money(invoice.total_cents, invoice.currency),
            "summary": summary,
            "amount_due": money(0 if settled else invoice.total_cents, invoice.currency),
            "amount_paid": money(invoice.total_cents if invoice.status == InvoiceStatus.PAID else 0, invoice.currency),
            "how_to_pay": "" if settled or invoice.status == InvoiceStatus.DRAFT else collection,
        },
    )
    return HTML(string=html).write_pdf()
