"""PHI-guard benchmark: what building an office's index and checking one payload cost, for
offices of 300 / 3,000 / 30,000 patients, beside the guard as it was before (issue 8, item 14).

    .venv/bin/python -m bench.phi_guard                      # SQLite in /tmp
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m bench.phi_guard --sizes 300 3000 30000

It never touches the database DATABASE_URL names (same rules as bench.billing_run: a
database of its own, `phi_guard_bench` by default). It prints figures; nothing asserts a
time. See bench/README.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from bench.billing_run import BASE_DIR, prepare_database, resolve_target, setup_django
from bench.billing_run import migrate as migrate_database

# The guard before the index was reused and dates were looked up in a set.
BEFORE_COMMIT = "a5da65a"
MARKER = "phi-guard-bench"
SYLLABLES = ("ka", "lo", "vex", "mur", "tis", "bra", "quo", "zan", "tho", "wyn", "sel", "jix", "pru", "gav", "oko")


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).title()


def office_with(patients: int) -> Any:
    """The benchmark office of that size, built once (bulk insert) and kept."""
    from datetime import date, timedelta

    from offices.models import Company, Office
    from patients.models import Patient

    company, _ = Company.objects.get_or_create(name=MARKER)
    name = f"{MARKER} {patients}"
    office = Office.objects.filter(company=company, name=name).first()
    if office is not None and Patient.objects.filter(office=office).count() == patients:
        return office
    if office is None:
        office = Office.objects.create(company=company, name=name, billing_email=f"billing{patients}@bench.example")
    Patient.objects.filter(office=office).delete()
    rng = random.Random(patients)
    rows = []
    for i in range(patients):
        first, last = _name(rng, 2), _name(rng, rng.choice((2, 3)))
        rows.append(
            Patient(
                office=office,
                first_name=first,
                last_name=last,
                date_of_birth=date(1930, 1, 1) + timedelta(days=rng.randrange(33_000)),  # before 2020
                mrn=f"M{i:07d}",
                email=f"{first.lower()}.{last.lower()}{i}@mail.example",
                phone=f"({rng.randrange(200, 999)}) 555-{rng.randrange(10_000):04d}",
            )
        )
    Patient.objects.bulk_create(rows, batch_size=2000)
    return office


def payloads(office: Any) -> dict[str, dict[str, Any]]:
    """What one push or one operator action checks, as the callers pass it today."""
    return {
        "stripe item": {
            "customer": "cus_Q1w2E3r4T5y6U7",
            "invoice": "in_1Q2w3E4r5T6y7U8i9O0p",
            "currency": "usd",
            "description": "Active patients, 2026-03-10 to 2026-04-10",
            "quantity": 2400,
            "unit_amount_decimal": Decimal(450),
            "metadata": {"invoice_id": "8812", "item_key": "recurring:450"},
        },
        "stripe invoice": {
            "customer": "cus_Q1w2E3r4T5y6U7",
            "collection_method": "charge_automatically",
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "currency": "usd",
            "number": "INV-2026-004417",
            "metadata": {"invoice_id": "8812", "office_id": str(office.pk)},
        },
        "one-off lines": {
            "lines": [
                {"description": "On-site training, 2 days"},
                {"description": "Extra seat licence"},
                {"description": "Records migration from the previous vendor, March 2026"},
            ]
        },
        "500-char note": {
            "payment_note": (
                "Wire received from the clinic's bank on 2026-04-12, reference 2026-0412-77, covering the March "
                "cycle and the setup fee; the remaining balance of $1,234.56 follows with the next cheque. "
            )
            * 3
        },
    }


def _before_module() -> types.ModuleType | None:
    """billing/phi_guard.py at BEFORE_COMMIT, imported under another name (None if git cannot say)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE_COMMIT}:billing/phi_guard.py"],
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("billing._phi_guard_before")
    module.__file__ = f"{BEFORE_COMMIT}:billing/phi_guard.py"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # our own file, from git
    return module


def _timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def bench(sizes: list[int], *, before: bool, repeat: int) -> None:
    from billing.phi_guard import PhiIndex, phi_check

    old = _before_module() if before else None
    if before and old is None:
        print(f"(no 'before' figures: git cannot show {BEFORE_COMMIT}:billing/phi_guard.py)")
    for size in sizes:
        started = time.perf_counter()
        office = office_with(size)
        print(f"\n== {size:,} patients (office {office.pk}, data ready in {time.perf_counter() - started:.1f} s)")
        build = _timed(lambda: PhiIndex.for_office(office), repeat)  # noqa: B023
        index = PhiIndex.for_office(office)
        print(f"index build (PhiIndex.for_office): {_ms(build)}")
        header = f"{'payload':<16} {'check, index reused':>20} {'phi_check, index built':>24}"
        if old is not None:
            header += f" {'before (phi_check)':>20} {'before ÷ reused':>16}"
        print(header)
        for label, fields in payloads(office).items():
            _check(index, fields)  # warm
            reused = _timed(lambda: _check(index, fields), repeat * 20)  # noqa: B023
            default = _timed(lambda: _call(phi_check, office, fields), repeat)  # noqa: B023
            line = f"{label:<16} {_ms(reused):>20} {_ms(default):>24}"
            if old is not None:
                old_repeat = max(1, repeat // (1 + size // 3000))
                was = _timed(lambda: _call(old.phi_check, office, fields), old_repeat)  # noqa: B023
                line += f" {_ms(was):>20} {was / reused:>15,.0f}×"
            print(line)


def _check(index: Any, fields: Mapping[str, Any]) -> None:
    index.check(fields)


def _call(fn: Callable[..., None], office: Any, fields: Mapping[str, Any]) -> None:
    fn(office=office, fields=fields)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 3000, 30000], help="patients per office")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per figure (median; default 5)")
    parser.add_argument("--no-before", action="store_true", help=f"skip the guard as of {BEFORE_COMMIT}")
    parser.add_argument("--db-name", default="phi_guard_bench", help="benchmark database name")
    parser.add_argument("--database-url", default="", help="use exactly this database (see bench.billing_run)")
    parser.add_argument("--i-know", action="store_true", help="allow a shared/development database")
    parser.add_argument("--reset", action="store_true", help="drop and recreate the benchmark database first")
    args = parser.parse_args(argv)
    target = resolve_target(args)
    prepare_database(target, reset=args.reset)
    setup_django(target)
    print(f"database: {target.vendor} {target.name}; migrate {migrate_database():.1f} s")
    bench(args.sizes, before=not args.no_before, repeat=args.repeat)


if __name__ == "__main__":
    main()
