"""`manage.py retention_sweep [--dry-run]`: the six-year rule (45 CFR 164.316(b)(2)) —
report what is past retention (kept), delete expired sessions and API tokens only."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from compliance.services import retention_sweep


class Command(BaseCommand):
    help = "Report records past the six-year retention (never deleted) and delete expired sessions and tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Report what would be deleted; delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = retention_sweep(dry_run=options["dry_run"])
        self.stdout.write(f"Retention cutoff (six years): {report.cutoff.isoformat()}")
        self.stdout.write("Past retention, kept (archiving is a separately approved operation):")
        for name, count in report.past_retention.items():
            self.stdout.write(f"  {name}: {count}")
        verb = "Would delete" if report.dry_run else "Deleted"
        for name, count in report.deleted.items():
            self.stdout.write(f"{verb} {name}: {count}")
