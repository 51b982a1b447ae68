"""`manage.py reconcile_stripe [--days N] [--office ID] [--fail-on-mismatch]` (spec §8, §10).

Compares local invoices with Stripe and prints every mismatch as a table; each is also
audited (`reconciliation.mismatch`). Reads Stripe, changes nothing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.stripe.gateway import GatewayError
from billing.stripe.reconcile import Mismatch, reconcile_stripe

COLUMNS = ("invoice", "number", "office", "stripe invoice", "field", "local", "stripe")


def _row(item: Mismatch) -> tuple[str, ...]:
    return (
        str(item.invoice_id or "-"),
        item.number or "-",
        str(item.office_id or "-"),
        item.stripe_invoice_id or "-",
        item.field,
        item.local,
        item.stripe,
    )


def render_table(mismatches: list[Mismatch]) -> str:
    rows = [COLUMNS, *(_row(m) for m in mismatches)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Compare local invoices (open, or changed recently) with Stripe; report and audit mismatches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None, help="Window for changed invoices (default 35).")
        parser.add_argument("--office", dest="office", type=int, action="append", help="Office id (repeatable).")
        parser.add_argument("--fail-on-mismatch", action="store_true", help="Exit with an error if any mismatch.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["days"] is not None and options["days"] < 0:
            raise CommandError("--days must be 0 or more.")
        try:
            report = reconcile_stripe(days=options["days"], office_ids=options.get("office"))
        except GatewayError as exc:
            raise CommandError(f"Stripe could not be read: {exc}") from exc
        self.stdout.write(
            f"Checked {report.checked} invoices (open, or changed since {report.since:%Y-%m-%d %H:%M} UTC) "
            f"against {report.stripe_invoices_seen} Stripe invoices of {report.customers_listed} customers; "
            f"{report.customers_seen} Stripe customers compared with their offices."
        )
        if not report.mismatches:
            self.stdout.write(self.style.SUCCESS("No mismatches."))
            return
        self.stdout.write(render_table(report.mismatches))
        message = f"{len(report.mismatches)} mismatches (audited as reconciliation.mismatch; nothing was changed)."
        if options["fail_on_mismatch"]:
            raise CommandError(message)
        self.stdout.write(self.style.WARNING(message))
