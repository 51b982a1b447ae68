"""`manage.py check_db_roles [--role NAME] [--print-grants --app-role A --owner-role O]`
(issue 12, item 2): verify that the application's database role cannot TRUNCATE, UPDATE or
DELETE the audit trail (only seal it), cannot TRUNCATE frozen invoices, owns no table, and
that the guard triggers are in place — or print the GRANT statements that make it so
(docs/deploy-db-roles.md). PostgreSQL only. Exits non-zero naming every problem."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from audit.db_roles import check_roles, grant_statements


class Command(BaseCommand):
    help = "Check (or print the GRANTs for) the application's least-privileged PostgreSQL role."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="Database alias (default: default).")
        parser.add_argument("--role", help="Role to check (default: the role this connection logs in as).")
        parser.add_argument("--print-grants", action="store_true", help="Print the SQL setup instead of checking.")
        parser.add_argument("--app-role", default="billing_app", help="With --print-grants: the application role.")
        parser.add_argument("--owner-role", default="billing_owner", help="With --print-grants: the migration role.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["print_grants"]:
            try:
                statements = grant_statements(app_role=options["app_role"], owner_role=options["owner_role"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write("\n".join(statements))
            return
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":
            raise CommandError(f"check_db_roles needs PostgreSQL; this database is {connection.vendor}.")
        with connection.cursor() as cursor:
            role, problems = check_roles(cursor, role=options["role"])
        if problems:
            for problem in problems:
                self.stderr.write(f"PROBLEM [{problem.code}]: {problem.message}")
            raise CommandError(f"Database role {role} is over-privileged or incomplete: {len(problems)} problem(s).")
        self.stdout.write(
            self.style.SUCCESS(
                f"OK: role {role} cannot TRUNCATE, UPDATE or DELETE the audit trail (seal columns only), "
                f"owns no table, and every guard trigger is enabled."
            )
        )
