"""What each email says (spec §12, emails), composed only from values this system owns:
invoice numbers, amounts in major units with the currency, dates and times in the office's
zone, counts, the vendor's and the office's own names. No patient is ever named, numbered
or referenced (not even by billing reference); the invoice PDF attached lists patients by
billing reference only, as everywhere else.

Each builder returns a `Draft`: the template context plus the `trusted` values it put in
(what `billing.phi_guard` may take out of the rendered text before looking for PHI)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.template.loader import get_template, render_to_string
from django.utils.html import strip_tags

from billing.dates import local_day, local_minute, local_period
from billing.engine.labels import PATIENT_GROUP_LABEL
from billing.models import PATIENT_LINE_KINDS, Invoice, InvoiceKind, InvoiceStatus
from billing.money import format_cents
from billing.selectors import patient_line_groups
from notifications.models import EmailKind
from offices.models import CollectionMethod, Office


@dataclass
class Draft:
    """A message before rendering: its context and the values we put into it."""

    kind: str
    office: Office
    context: dict[str, Any]
    invoice: Invoice | None = None
    trusted: list[str] = field(default_factory=list)

    def money(self, cents: int, currency: str) -> str:
        text = format_cents(cents, currency, symbol=False)
        self.trusted.append(text)
        return text

    def day(self, instant: datetime) -> str:
        text = local_day(instant, self.office.timezone)
        self.trusted.append(text)
        return text

    def minute(self, instant: datetime) -> str:
        text = local_minute(instant, self.office.timezone)
        self.trusted += [text, local_day(instant, self.office.timezone)]
        return text

    def ours(self, *values: object) -> None:
        self.trusted += [str(v) for v in values if v not in (None, "")]


@dataclass(frozen=True)
class Rendered:
    subject: str
    body_text: str
    body_html: str
    trusted: list[str]


def _base(kind: str, office: Office, invoice: Invoice | None = None) -> Draft:
    vendor = settings.BILLING_VENDOR
    draft = Draft(kind=kind, office=office, invoice=invoice, context={"office": office, "vendor": vendor})
    draft.ours(vendor["name"], vendor["address"], vendor["email"], office.timezone)
    draft.context["zone"] = office.timezone
    return draft


def _invoice_label(draft: Draft, invoice: Invoice) -> str:
    if invoice.is_setup_fee:
        return "setup fee"
    if invoice.kind == InvoiceKind.CYCLE and invoice.period_start and invoice.period_end:
        period = local_period(invoice.period_start, invoice.period_end, draft.office.timezone)
        draft.ours(period, local_day(invoice.period_start, draft.office.timezone))
        draft.ours(local_day(invoice.period_end, draft.office.timezone))
        return f"billing period {period}"
    return "one-off charges"


def _summary(draft: Draft, invoice: Invoice) -> list[dict[str, str]]:
    """The invoice's first page in short: one line per patient group (a count, never a
    patient), the other lines one each (their descriptions, which the PHI guard checks)."""
    rows = [
        {
            "description": f"{PATIENT_GROUP_LABEL[g['kind']]}: {g['n']} × "
            f"{draft.money(g['unit_amount_cents'], invoice.currency)}",
            "amount": draft.money(g["n"] * g["unit_amount_cents"], invoice.currency),
        }
        for g in patient_line_groups(invoice)
    ]
    draft.ours(*PATIENT_GROUP_LABEL.values())
    for line in invoice.lines.exclude(kind__in=PATIENT_LINE_KINDS).order_by("id"):
        description = line.description
        if line.quantity != 1:
            description += f": {line.quantity} × {draft.money(line.unit_amount_cents, invoice.currency)}"
        rows.append({"description": description, "amount": draft.money(line.amount_cents, invoice.currency)})
    return rows


def invoice_issued(invoice: Invoice) -> Draft:
    """Invoice issued: number, what it covers, total, due date, how it is paid; the PDF attached."""
    office = invoice.office
    draft = _base(EmailKind.INVOICE_ISSUED, office, invoice)
    assert invoice.finalized_at is not None and invoice.number
    draft.ours(invoice.number)
    if invoice.plan is not None:
        draft.ours(invoice.plan.name)
    draft.context.update(
        number=invoice.number,
        covers=_invoice_label(draft, invoice),
        total=draft.money(invoice.total_cents, invoice.currency),
        issued=draft.day(invoice.finalized_at),
        due=draft.day(invoice.due_at or invoice.finalized_at),
        automatic=office.collection_method == CollectionMethod.CHARGE_AUTOMATICALLY,
        summary=_summary(draft, invoice),
    )
    return draft


def payment_failed(invoice: Invoice, *, attempt: int | None, grace_ends_at: datetime | None) -> Draft:
    """Payment failed: which invoice, how much, and when billing would be suspended."""
    office = invoice.office
    draft = _base(EmailKind.PAYMENT_FAILED, office, invoice)
    draft.ours(invoice.number)
    draft.context.update(
        number=invoice.number,
        amount=draft.money(invoice.total_cents, invoice.currency),
        attempt=attempt,
        suspends_at=draft.minute(grace_ends_at) if grace_ends_at else None,
    )
    return draft


def _past_due_rows(draft: Draft, invoices: list[Invoice]) -> list[dict[str, str]]:
    draft.ours(*(i.number for i in invoices))
    return [
        {
            "number": str(i.number),
            "amount": draft.money(i.total_cents, i.currency),
            "since": draft.day(i.past_due_at) if i.past_due_at else "",
        }
        for i in invoices
    ]


def _totals(draft: Draft, invoices: list[Invoice]) -> list[str]:
    by_currency: dict[str, int] = {}
    for i in invoices:
        by_currency[i.currency] = by_currency.get(i.currency, 0) + i.total_cents
    return [draft.money(cents, currency) for currency, cents in sorted(by_currency.items())]


def suspension_warning(office: Office, *, oldest: Invoice, past_due: list[Invoice], suspends_at: datetime) -> Draft:
    """Suspension warning: what is past due and when new activations would stop."""
    draft = _base(EmailKind.SUSPENSION_WARNING, office, oldest)
    draft.context.update(
        suspends_at=draft.minute(suspends_at),
        invoices=_past_due_rows(draft, past_due),
        totals=_totals(draft, past_due),
        grace_days=settings.BILLING_GRACE_DAYS,
    )
    return draft


def suspended(office: Office, *, since: datetime, past_due: list[Invoice]) -> Draft:
    """Suspended: since when, what is past due, what stops (new activations) and what does not."""
    draft = _base(EmailKind.SUSPENDED, office)
    draft.context.update(
        since=draft.minute(since), invoices=_past_due_rows(draft, past_due), totals=_totals(draft, past_due)
    )
    return draft


def reactivated(office: Office, *, since: datetime) -> Draft:
    """Reactivated: billing is active again, activations are allowed."""
    draft = _base(EmailKind.REACTIVATED, office)
    draft.context.update(since=draft.minute(since))
    return draft


def credit_note_issued(
    office: Office,
    *,
    number: str,
    total_cents: int,
    currency: str,
    issued_at: datetime,
    invoice: Invoice | None = None,
) -> Draft:
    """Credit note issued: its number, amount and the invoice it credits."""
    draft = _base(EmailKind.CREDIT_NOTE_ISSUED, office, invoice)
    draft.ours(number, invoice.number if invoice else None)
    draft.context.update(
        number=number,
        amount=draft.money(total_cents, currency),
        issued=draft.day(issued_at),
        invoice_number=invoice.number if invoice else None,
    )
    return draft


# --- Rendering ------------------------------------------------------------------------------


def render(draft: Draft) -> Rendered:
    """templates/notifications/<kind>_subject.txt, <kind>.txt and <kind>.html."""
    names = [f"notifications/{draft.kind}{suffix}" for suffix in ("_subject.txt", ".txt", ".html")]
    subject = " ".join(render_to_string(names[0], draft.context).split())
    body_text = render_to_string(names[1], draft.context).strip() + "\n"
    body_html = render_to_string(names[2], draft.context)
    return Rendered(
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        trusted=sorted(set(draft.trusted) | template_words(tuple(names))),
    )


_TEMPLATE_CODE = re.compile(r"\{%.*?%\}|\{\{.*?\}\}|\{#.*?#\}|<[^>]*>", re.DOTALL)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


@cache
def template_words(names: tuple[str, ...]) -> frozenset[str]:
    """The words our templates themselves write (their fixed text, tags and code left out):
    text the system composes is never refused because a patient shares a word of it."""
    words: set[str] = set()
    for name in (*names, "notifications/base.html", "notifications/base.txt"):
        source = get_template(name).template.source  # type: ignore[attr-defined]
        words.update(_WORD.findall(html.unescape(_TEMPLATE_CODE.sub(" ", source))))
    return frozenset(words)


def html_as_text(body_html: str) -> str:
    """What a reader of the HTML part sees, for the PHI guard (tags out, entities decoded)."""
    return html.unescape(strip_tags(body_html))


def trusted_values(values: list[str]) -> list[object]:
    """Stored trusted strings back as guard tokens; ISO dates also as dates (any written form)."""
    tokens: list[object] = list(values)
    for value in values:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            tokens.append(date.fromisoformat(value))
    return tokens


def is_zero_total(invoice: Invoice) -> bool:
    """Zero-total invoices are paid at finalization with nothing to collect: not mailed."""
    return invoice.total_cents == 0 and invoice.status == InvoiceStatus.PAID
