"""Queries of the console's overview page (issue 9) at a few numbers of offices.

    .venv/bin/python -m bench.console_queries [--offices 3 300]

Builds a scratch test database (SQLite by default; DATABASE_URL for PostgreSQL), bills each
office through the services (a subscription, three active patients, one finished cycle),
then counts the queries of one `GET /admin/` as an operator, and of `GET /admin/` for the
same month again. Prints one line per size; the figure should not grow with the offices.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offices", type=int, nargs="+", default=[3, 300])
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    os.environ.setdefault("TEST_SQLITE_PATH", "/tmp/bench_console_queries.sqlite3")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    setup_test_environment()
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        from billing.tests.support.stripe_helpers import billed_office

        client = Client()
        client.force_login(get_user_model().objects.create_superuser("bench", "bench@example.com", "pw"))
        built = 0
        for size in sorted(args.offices):
            started = time.monotonic()
            while built < size:
                billed_office(patients=3)
                built += 1
            seeded = time.monotonic() - started
            with CaptureQueriesContext(connection) as queries:
                response = client.get("/admin/")
            assert response.status_code == 200, response.status_code
            print(f"offices={size:>5}  queries on /admin/={len(queries):>3}  (seeded in {seeded:.0f} s)", flush=True)
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


if __name__ == "__main__":
    main()
