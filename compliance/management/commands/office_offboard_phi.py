"""`manage.py office_offboard_phi --office ID [--export PATH]`: erase a departed office's
patients' identifying fields (issue 12 item 9), optionally writing their records first to
PATH as a CSV for the office. Refused while the office is still subscribed. Audited."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compliance.services import office_offboard_phi
from config.errors import ApplicationError
from offices.models import Office


class Command(BaseCommand):
    help = "Erase the PHI of an office's patients (tombstone); billing records are kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--office", type=int, required=True, help="The office's id.")
        parser.add_argument(
            "--export", help="Write the patients' records (PHI) to this new file first, for the office."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        office = Office.objects.filter(pk=options["office"]).first()
        if office is None:
            raise CommandError(f"No office with id {options['office']}.")
        out = Path(options["export"]) if options["export"] else None
        if out is not None and out.exists():
            raise CommandError(f"{out} exists already: the export is never written over another file.")

        def write(body: bytes) -> None:
            # Owner-only, never over another file; written before the erasure commits, so a
            # failed write leaves every patient as it was.
            assert out is not None
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())

        try:
            result = office_offboard_phi(office=office, export=out is not None, export_sink=write if out else None)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        except OSError as exc:
            raise CommandError(f"Could not write {out}: {exc.strerror}; nothing was erased.") from None
        if out is not None:
            self.stdout.write(f"Wrote the patients' records to {out} (PHI: hand it to the office, then delete it).")
        self.stdout.write(
            f"Office {office.pk}: {result.erased} patient(s) erased, {result.already_erased} already erased."
        )
