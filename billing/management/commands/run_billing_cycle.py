"""`manage.py run_billing_cycle [--as-of ISO8601] [--office ID] [--dry-run]` (spec §10)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import Count
from tqdm import tqdm

from billing.engine import AdvanceStats
from billing.models import Invoice, InvoiceStatus
from billing.money import format_cents
from billing.runs import billing_run
from config.errors import ApplicationError


class _DryRunRollback(Exception):
    pass


class Command(BaseCommand):
    help = "Finalize ended billing cycles and open the next ones, for every due office (or one)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--as-of", dest="as_of", help="ISO 8601 date-time with offset; defaults to now.")
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
        rows: list[tuple[int, AdvanceStats]] = []

        def on_start(total: int) -> None:
            nonlocal bar
            if show_bar:
                bar = tqdm(total=total, unit="office", desc="billing", file=sys.stderr, leave=False)

        def progress(office_id: int, stats: AdvanceStats) -> None:
            rows.append((office_id, stats))
            if bar is not None:
                bar.update(1)

        try:
            with transaction.atomic():
                run = billing_run(as_of=as_of, office_ids=office_ids, progress=progress, on_start=on_start)
                # Read the table inside the transaction: a dry run rolls it back afterwards.
                finalized = [
                    _Row(
                        office=inv.office.name,
                        number=inv.number if not dry_run else None,
                        kind=inv.kind,
                        period=(
                            f"{inv.period_start:%Y-%m-%d}..{inv.period_end:%Y-%m-%d}"
                            if inv.period_start and inv.period_end
                            else "-"
                        ),
                        lines=inv.line_count,
                        total_cents=inv.total_cents,
                        currency=inv.currency,
                        status=inv.status,
                    )
                    for inv in Invoice.objects.filter(
                        finalized_at__isnull=False, office_id__in=[r[0] for r in rows], updated_at__gte=run.started_at
                    )
                    .select_related("office")
                    .annotate(line_count=Count("lines"))
                    .order_by("office_id", "period_start", "id")
                ]
                if dry_run:
                    raise _DryRunRollback
        except _DryRunRollback:
            pass
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        finally:
            if bar is not None:
                bar.close()

        self._summary(run, finalized, dry_run)

    def _summary(self, run: Any, finalized: list[_Row], dry_run: bool) -> None:
        out = self.stdout
        title = "DRY RUN — nothing was written" if dry_run else f"Billing run #{run.pk}"
        out.write(self.style.MIGRATE_HEADING(f"{title} (as of {run.as_of.isoformat()})"))
        if finalized:
            header = (
                f"{'office':<28} {'invoice':<18} {'kind':<8} {'period':<25} {'lines':>5} {'total':>14} {'status':<6}"
            )
            out.write(header)
            out.write("-" * len(header))
            for row in finalized:
                total = format_cents(row.total_cents, row.currency, symbol=False)
                out.write(
                    f"{row.office[:28]:<28} {(row.number or '(would number)')[:18]:<18} {row.kind:<8} "
                    f"{row.period:<25} {row.lines:>5} {total:>14} {row.status:<6}"
                )
        totals: dict[str, int] = {}
        for row in finalized:
            totals[row.currency] = totals.get(row.currency, 0) + row.total_cents
        total_text = ", ".join(format_cents(cents, cur, symbol=False) for cur, cents in sorted(totals.items())) or "0"
        out.write(
            f"offices due {run.offices_due}, done {run.offices_done}, errors {run.error_count}; "
            f"invoices finalized {run.invoices_finalized}, opened {run.invoices_opened}; "
            f"lines {run.lines_created}; finalized total {total_text}"
        )
        if run.error_count:
            out.write(self.style.ERROR(f"{run.error_count} office(s) failed; see the run in the admin."))
        paid_zero = sum(1 for row in finalized if row.status == InvoiceStatus.PAID)
        if paid_zero:
            out.write(f"{paid_zero} zero-total invoice(s) marked paid without a Stripe push.")


@dataclass(frozen=True)
class _Row:
    office: str
    number: str | None
    kind: str
    period: str
    lines: int
    total_cents: int
    currency: str
    status: str
