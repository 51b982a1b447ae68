"""`manage.py verify_audit_chain [--seal-first] [--anchors-log PATH]` (spec §9): detect any
edit, deletion, insertion or truncation of the audit trail.

Exit status: 0 intact; 1 broken (the first break is named). Findings (entries whose time
runs backwards along the chain) are listed as warnings — the chain holds, the entries' times
are not credible — and with `--fail-on-findings` exit with status 3. `--anchors-log` compares
the chain with the `audit.anchor` lines of the application log, the copy of the anchors kept outside the database.

Read-only: it writes nothing, not even an audit entry of its own outcome (verification
must not change what it verifies). `--seal-first` is the one exception: it runs the
sealer before verifying, as the periodic task would."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import audit_seal
from audit.verify import read_log_anchors, verify_chain

FINDINGS_EXIT_CODE = 3


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
        parser.add_argument(
            "--fail-on-findings",
            action="store_true",
            help=f"Exit with status {FINDINGS_EXIT_CODE} when the chain is intact but has findings "
            "(backdated entries).",
        )
        parser.add_argument(
            "--anchors-log",
            metavar="PATH",
            help="An application log holding 'audit.anchor seq=… hash=… ts=…' lines to check the chain against.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        if options["seal_first"]:
            sealed = audit_seal()
            self.stdout.write(f"Sealed {sealed} pending entr{'y' if sealed == 1 else 'ies'} first.")
        log_anchors = None
        if options["anchors_log"]:
            try:
                log_anchors = read_log_anchors(options["anchors_log"])
            except OSError as exc:
                raise CommandError(f"Cannot read --anchors-log {options['anchors_log']}: {exc.strerror}.") from exc
            if not log_anchors:
                raise CommandError(f"--anchors-log {options['anchors_log']} holds no 'audit.anchor' line.")
        report = verify_chain(
            batch_size=options["batch_size"],
            stale_after=timedelta(minutes=options["stale_minutes"]),
            log_anchors=log_anchors,
        )
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
        logged = f", {report.log_anchors_checked} log anchors matched" if log_anchors is not None else ""
        legacy = f", {report.legacy_entries} legacy (unkeyed)" if report.legacy_entries else ""
        summary = (
            f"audit chain intact: {report.sealed} sealed entries{span}{legacy}, "
            f"head {report.head_hash}, {report.anchors_checked} anchors matched{logged}, {report.unsealed} unsealed."
        )
        if report.findings_total:
            for finding in report.findings:
                self.stderr.write(self.style.WARNING(f"FINDING: {finding.describe()}"))
            more = report.findings_total - len(report.findings)
            if more:
                self.stderr.write(self.style.WARNING(f"FINDING: … and {more} more"))
            if options["fail_on_findings"]:
                raise CommandError(
                    f"{summary} But {report.findings_total} finding(s): entries whose time runs backwards "
                    f"along the chain.",
                    returncode=FINDINGS_EXIT_CODE,
                )
            summary += f" {report.findings_total} finding(s) (see the FINDING lines)."
        self.stdout.write(self.style.SUCCESS(f"OK: {summary}"))
