"""`manage.py evidence_export --month YYYY-MM --out PATH`: the month's compliance evidence
archive (a zip; the month is the UTC calendar month), audited as a read (issue 12 item 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compliance.services import evidence_export_create
from config.errors import ApplicationError


class Command(BaseCommand):
    help = "Write the compliance evidence archive (zip) for one UTC calendar month."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", required=True, help="YYYY-MM, the UTC calendar month (e.g. 2026-11).")
        parser.add_argument(
            "--out", required=True, help="File to write, or an existing folder (then evidence-YYYY-MM.zip in it)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            name, archive = evidence_export_create(month=options["month"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        out = Path(options["out"])
        if out.is_dir():
            out = out / name
        try:
            out.write_bytes(archive)
        except OSError as exc:
            raise CommandError(f"Could not write {out}: {exc.strerror}") from None
        self.stdout.write(f"Wrote {out} ({len(archive)} bytes).")
