"""Invoice documents: HTML template → PDF (weasyprint). No PHI: patients by billing ref.
Dates are the office's local dates (billing/dates.py)."""

from __future__ import annotations

from django.conf import settings
from django.template.loader import render_to_string

from billing.dates import local_day, local_minute
from billing.models import Invoice
from billing.money import format_cents


def money(cents: int, currency: str) -> str:
    """How the invoice document writes an amount: "1,234.50 USD"."""
    return format_cents(cents, currency, symbol=False)


def invoice_pdf(invoice: Invoice) -> bytes:
    """Render an invoice as a PDF from templates/billing/invoice.html (spec §9, §10)."""
    from weasyprint import HTML  # imported lazily: it loads pango at import time

    tz = invoice.office.timezone
    lines = [
        {
            "kind": line.kind.replace("_", " "),
            "description": line.description,
            "patient_ref": line.patient_ref,
            "quantity": line.quantity,
            "unit": money(line.unit_amount_cents, invoice.currency),
            "amount": money(line.amount_cents, invoice.currency),
        }
        for line in invoice.lines.all().order_by("id")
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
        },
    )
    return HTML(string=html).write_pdf()
