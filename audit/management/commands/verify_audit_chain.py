"""`manage.py verify_audit_chain [--seal-first]` (spec §9): detect any edit, deletion,
insertion or truncation of the audit trail.

Read-only: it writes nothing, not even an audit entry of its own outcome (verification
must not change what it verifies). `--seal-first` is the one exception: it runs the
sealer before verifying, as the periodic task would."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import audit_seal
from audit.verify import verify_chain


class Command(BaseCommand):
    help = "Verify the audit hash chain; exits non-zero naming the first broken entry and how it broke."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--seal-first", action="store_true", help="Seal pending entries before verifying (this writes)."
        )
        parser.add_argument("--batch-size", type=int, default=5000, help="Entries read per query (default 5000).")
        parser.add_argument(
            "--stale-minutes",
            type=int,
            default=10,
            help="Warn about unsealed entries older than this many minutes (default 10).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        if options["seal_first"]:
            sealed = audit_seal()
            self.stdout.write(f"Sealed {sealed} pending entr{'y' if sealed == 1 else 'ies'} first.")
        report = verify_chain(batch_size=options["batch_size"], stale_after=timedelta(minutes=options["stale_minutes"]))
        if report.stale_unsealed:
            self.stderr.write(
                self.style.WARNING(
                    f"WARNING: {report.stale_unsealed} unsealed entr{'y' if report.stale_unsealed == 1 else 'ies'} "
                    f"older than {options['stale_minutes']} minutes: is the sealer (audit.tasks.audit_seal_task) "
                    f"running?"
                )
            )
        if report.broken is not None:
            raise CommandError(
                f"Audit chain BROKEN — {report.broken.describe()} "
                f"({report.sealed} entries verified before it; head seq {report.head_seq})."
            )
        span = f" (seq 1..{report.last_seq})" if report.sealed else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"OK: audit chain intact: {report.sealed} sealed entries{span}, "
                f"head {report.head_hash}, {report.anchors_checked} anchors matched, {report.unsealed} unsealed."
            )
        )
