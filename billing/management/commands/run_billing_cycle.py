"""`manage.py run_billing_cycle [--as-of ISO8601] [--office ID] [--dry-run]` (spec §10)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from billing.dates import local_day
from billing.engine.office import AdvanceStats
from billing.engine.run import RunReport, billing_run, billing_run_preview, billing_run_report
from billing.models import InvoiceStatus
from billing.money import format_cents
from config.errors import ApplicationError


class Command(BaseCommand):
    help = "Finalize ended billing cycles and open the next ones, for every due office (or one)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--as-of",
            dest="as_of",
            help="ISO 8601 date-time with offset; defaults to now. In the future only with --dry-run.",
        )
        parser.add_argument("--office", dest="office", type=int, action="append", help="Office id (repeatable).")
        parser.add_argument("--dry-run", action="store_true", help="Show what would be invoiced; write nothing.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, **options: Any) -> None:
        as_of = options.get("as_of")
        if as_of is not None and not isinstance(as_of, str):
            as_of = as_of.isoformat()  # tolerate a datetime through call_command
        office_ids = options.get("office")
        dry_run = options["dry_run"]
        bar: tqdm[Any] | None = None
        show_bar = not options["no_progress"]
        per_office: dict[int, AdvanceStats] = {}

        def on_start(total: int) -> None:
            nonlocal bar
            if show_bar:
                bar = tqdm(total=total, unit="office", desc="billing", file=sys.stderr, leave=False)

        def progress(office_id: int, stats: AdvanceStats) -> None:
            per_office[office_id] = stats
            if bar is not None:
                bar.update(1)

        try:
            if dry_run:
                report = billing_run_preview(
                    as_of=as_of, office_ids=office_ids, trigger="command", progress=progress, on_start=on_start
                )
            else:
                # One transaction per office and boundary (spec §6): nothing here wraps the run.
                run = billing_run(as_of=as_of, office_ids=office_ids, progress=progress, on_start=on_start)
                report = billing_run_report(run=run, per_office=per_office)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        finally:
            if bar is not None:
                bar.close()

        self._summary(report)

    def _summary(self, report: RunReport) -> None:
        out, run = self.stdout, report.run
        title = "DRY RUN — nothing was written" if report.dry_run else f"Billing run #{run.pk}"
        out.write(self.style.MIGRATE_HEADING(f"{title} (as of {run.as_of.isoformat()})"))
        if report.dry_run and run.as_of > timezone.now():
            out.write(
                "Looking ahead: this assumes the patients active now stay active and nothing else changes until then."
            )
        if report.finalized:
            header = (
                f"{'office':<28} {'invoice':<18} {'kind':<8} {'period':<25} {'lines':>5} {'total':>14} {'status':<6}"
            )
            out.write(header)
            out.write("-" * len(header))
            for row in report.finalized:
                number = "(would number)" if report.dry_run or not row.number else row.number
                period = (  # the office's local dates (spec §2)
                    f"{local_day(row.period_start, row.timezone)}..{local_day(row.period_end, row.timezone)}"
                    if row.period_start and row.period_end
                    else "-"
                )
                total = format_cents(row.total_cents, row.currency, symbol=False)
                out.write(
                    f"{row.office[:28]:<28} {number[:18]:<18} {row.kind:<8} "
                    f"{period:<25} {row.lines:>5} {total:>14} {row.status:<6}"
                )
        totals = report.totals_by_currency()
        total_text = ", ".join(format_cents(cents, cur, symbol=False) for cur, cents in totals.items()) or "0"
        out.write(
            f"offices due {run.offices_due}, done {run.offices_done}, errors {run.error_count}; "
            f"invoices finalized {run.invoices_finalized}, opened {run.invoices_opened}; "
            f"lines {run.lines_created}; finalized total {total_text}"
        )
        if run.error_count:
            out.write(self.style.ERROR(f"{run.error_count} office(s) failed; see the run in the admin."))
        paid_zero = sum(1 for row in report.finalized if row.status == InvoiceStatus.PAID)
        if paid_zero:
            out.write(f"{paid_zero} zero-total invoice(s) marked paid without a Stripe push.")
