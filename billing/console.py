"""The console's overview page (the admin index, issue 9 item 1): a month's money per
currency, the last twelve months, AR aging, and what needs an operator now. The figures
are billing/overview.py's (defined there); this module only lays them out for
templates/admin/index.html, in people's terms: money in major units with its currency,
instants in the reporting zone. Called by django-unfold for the index
(`UNFOLD["DASHBOARD_CALLBACK"]`).

Only users who may view invoices see the figures (the others get the plain list of
pages); every view of the figures is audited (`console.overview_viewed`, spec §9)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.http import HttpRequest
from django.urls import reverse

from audit.services import audit_record
from billing.dates import local_minute
from billing.money import cents_to_major, format_cents
from billing.overview import Overview, overview
from config.errors import ApplicationError

FIGURE_LABELS = (
    ("billed_cents", "Billed", "Invoices finalized in the month (void ones excluded)."),
    ("collected_cents", "Collected", "Invoices paid in the month."),
    ("outstanding_cents", "Outstanding", "Open invoices at the end of the month (or now)."),
    ("past_due_cents", "Past due", "The part of outstanding that is past due."),
    ("mrr_cents", "MRR", "Cycle invoices whose period starts in the month (drafts at their running total)."),
)


TRIGGERS = {"beat": "hourly schedule", "command": "command", "admin": "console", "seed_demo": "demo data"}


@dataclass(frozen=True)
class Card:
    label: str
    value: str
    help: str


def _month_param(request: HttpRequest) -> tuple[date | None, str]:
    raw = (request.GET.get("month") or "").strip()
    if not raw:
        return None, ""
    try:
        year, month = (int(part) for part in raw.split("-"))
        return date(year, month, 1), ""
    except ValueError:
        return None, f"'{raw}' is not a month; use the form YYYY-MM, e.g. 2026-11."


def _office_link(office_id: int | None, name: str) -> dict[str, Any]:
    if office_id is None:
        return {"text": name or "—", "href": ""}
    return {"text": name, "href": reverse("admin:offices_office_change", args=[office_id])}


def _invoice_link(invoice_id: int | None, number: str) -> dict[str, Any]:
    if invoice_id is None:
        return {"text": number or "—", "href": ""}
    return {"text": number or f"#{invoice_id}", "href": reverse("admin:billing_invoice_change", args=[invoice_id])}


def _when(instant: datetime | None, zone: str) -> str:
    return local_minute(instant, zone) if instant else "—"


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], total: int, empty: str) -> dict[str, Any]:
    """A list for the page: headers, rows of cells ({"text", "href"}), how many in all."""

    def cell(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {"text": str(value), "href": ""}

    return {
        "headers": [header for header, _ in columns],
        "rows": [[cell(row[key]) for _, key in columns] for row in rows],
        "total": total,
        "more": max(0, total - len(rows)),
        "empty": empty,
    }


def dashboard_context(report: Overview, currency: str) -> dict[str, Any]:
    """The overview laid out for the template (pure: no queries)."""
    zone = report.zone
    currencies = [f.currency for f in report.figures]
    chosen = currency if currency in currencies else (currencies[0] if currencies else "")
    figures = next((f for f in report.figures if f.currency == chosen), None)
    cards = [
        Card(label, format_cents(getattr(figures, name), chosen) if figures else "—", help_text)
        for name, label, help_text in FIGURE_LABELS
    ]
    history = [p for p in report.history if p.currency == chosen]
    billed_chart = {
        "labels": [f"{p.month:%b %Y}" for p in history],
        "datasets": [
            {
                "label": f"Billed ({chosen.upper()})",
                "data": [str(cents_to_major(p.billed_cents, chosen)) for p in history],
            },
            {
                "label": f"Collected ({chosen.upper()})",
                "data": [str(cents_to_major(p.collected_cents, chosen)) for p in history],
            },
        ],
    }
    patients_chart = {
        "labels": [f"{m:%b %Y}" for m, _ in report.patients_history],
        "datasets": [{"label": "Active patients", "data": [n for _, n in report.patients_history]}],
    }
    aging = [
        {
            "label": b.label,
            "amount": format_cents(b.cents, b.currency),
            "office_count": b.office_count,
            "offices": [
                {**_office_link(office_id, name), "amount": format_cents(cents, b.currency)}
                for office_id, name, cents in b.offices
            ],
        }
        for b in report.aging
        if b.currency == chosen
    ]

    def owed(office: Any) -> str:
        return ", ".join(format_cents(a.cents, a.currency) for a in office.past_due) or "—"

    return {
        "overview_month": f"{report.month:%Y-%m}",
        "overview_month_label": f"{report.month:%B %Y}",
        "overview_zone": zone,
        "overview_as_of": _when(report.as_of, zone),
        "overview_currency": chosen,
        "overview_currencies": currencies,
        "overview_cards": cards,
        "overview_patients": [
            Card("Active patients", f"{report.active_patients:,}", "Patients active at the end of the month (or now)."),
            Card(
                "Billable patients",
                f"{report.billable_patients_in_month:,}",
                "Patients billed on the month's cycle invoices.",
            ),
        ],
        "overview_billed_chart": json.dumps(billed_chart),
        "overview_patients_chart": json.dumps(patients_chart),
        "overview_aging": aging,
        "overview_failed_payments": _table(
            [
                {
                    "when": _when(p.at, zone),
                    "office": _office_link(p.office_id, p.office_name),
                    "invoice": _invoice_link(p.invoice_id, p.number),
                    "amount": format_cents(p.cents, p.currency) if p.currency else "—",
                    "attempts": p.attempt_count or "—",
                }
                for p in report.failed_payments
            ],
            [
                ("When", "when"),
                ("Office", "office"),
                ("Invoice", "invoice"),
                ("Amount", "amount"),
                ("Attempt", "attempts"),
            ],
            report.failed_payments_total,
            "No failed payments.",
        ),
        "overview_stuck_pushes": _table(
            [
                {
                    "invoice": _invoice_link(p.invoice_id, p.number),
                    "office": _office_link(p.office_id, p.office_name),
                    "state": f"{p.status}, push {p.push_state}",
                    "since": _when(p.waiting_since, zone),
                    "attempts": p.push_attempts,
                    "amount": format_cents(p.cents, p.currency),
                }
                for p in report.stuck_pushes
            ],
            [
                ("Invoice", "invoice"),
                ("Office", "office"),
                ("State", "state"),
                ("Waiting since", "since"),
                ("Attempts", "attempts"),
                ("Amount", "amount"),
            ],
            report.stuck_pushes_total,
            "No push has failed or waited more than an hour.",
        ),
        "overview_suspended": _table(
            [
                {"office": _office_link(o.office_id, o.name), "since": _when(o.past_due_since, zone), "owed": owed(o)}
                for o in report.suspended_offices
            ],
            [("Office", "office"), ("Past due since", "since"), ("Owed past due", "owed")],
            report.suspended_total,
            "No office is suspended.",
        ),
        "overview_about_to_suspend": _table(
            [
                {
                    "office": _office_link(o.office_id, o.name),
                    "since": _when(o.past_due_since, zone),
                    "suspends_at": _when(o.suspends_at, zone),
                    "owed": owed(o),
                }
                for o in report.about_to_suspend
            ],
            [
                ("Office", "office"),
                ("Past due since", "since"),
                ("Suspended from", "suspends_at"),
                ("Owed past due", "owed"),
            ],
            report.about_to_suspend_total,
            "No office is about to be suspended.",
        ),
        "overview_runs": [
            {
                "href": reverse("admin:billing_billingrun_change", args=[r.run_id]),
                "run": f"#{r.run_id}",
                "as_of": _when(r.as_of, zone),
                "trigger": TRIGGERS.get(r.trigger, r.trigger.replace("_", " ")),
                "status": r.status,
                "offices": f"{r.offices_done} of {r.offices_due}",
                "finalized": r.invoices_finalized,
                "opened": r.invoices_opened,
                "failed": r.failed_offices,
            }
            for r in report.latest_runs
        ],
        "overview_mismatches": _table(
            [
                {
                    "when": _when(m.at, zone),
                    "what": m.field.replace("_", " "),
                    "ours": m.local,
                    "stripe": m.stripe,
                    "office": _office_link(m.office_id, m.office_name),
                    "invoice": _invoice_link(m.invoice_id, m.number),
                }
                for m in report.open_mismatches
            ],
            [
                ("When", "when"),
                ("What", "what"),
                ("Ours", "ours"),
                ("Stripe", "stripe"),
                ("Office", "office"),
                ("Invoice", "invoice"),
            ],
            report.open_mismatches_total,
            "No mismatches.",
        ),
        "overview_reconciled_at": _when(report.reconciled_at, zone),
    }


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    # Dead-man alerts (ops/selectors.py): beat or the audit sealer stopped. Shown to every
    # console user, above everything else; they name tasks and ages only.
    from ops.selectors import deadman_alerts

    context = {**context, "deadman_alerts": deadman_alerts()}
    if not request.user.has_perm("billing.view_invoice"):
        return context
    month, error = _month_param(request)
    if not error:
        try:
            report = overview(month=month)
        except ApplicationError as exc:
            error, report = exc.message, overview()
    else:
        report = overview()
    currency = (request.GET.get("currency") or "").strip().lower()
    layout = dashboard_context(report, currency)
    audit_record(
        action="console.overview_viewed",
        actor=request.user,
        data={"month": layout["overview_month"], "currency": layout["overview_currency"]},
    )
    # Issue 12 item 3: when the last access review was, and whether one is overdue.
    from compliance.console import access_review_overview

    layout["overview_access_review"] = access_review_overview(report.zone)
    return {**context, "overview": True, "overview_error": error, **layout}
