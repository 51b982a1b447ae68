"""The development tools stay out of production: no production module imports ``devtools``
(our localstripe extension) or ``localstripe`` (the PyPI package it wraps), and neither is an
installed Django app.

Production code is every ``.py`` file of the Django apps, the project package and the
scripts (scripts/devserver.py *launches* ``python -m devtools.localstripe`` as a
subprocess: an argv string, not an import), tests and migrations excepted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[3]
PRODUCTION_PACKAGES = ("config", "offices", "patients", "billing", "audit", "scripts")
PRODUCTION_FILES = ("manage.py",)
EXCLUDED_FOLDERS = {"tests", "migrations", "__pycache__"}
FORBIDDEN = ("devtools", "localstripe")


def production_files() -> list[Path]:
    files = [ROOT / name for name in PRODUCTION_FILES if (ROOT / name).is_file()]
    for package in PRODUCTION_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if EXCLUDED_FOLDERS.isdisjoint(path.relative_to(ROOT).parts[:-1]):
                files.append(path)
    return files


def _forbidden(module: str | None) -> bool:
    top = (module or "").split(".")[0]
    return top in FORBIDDEN


def forbidden_imports(path: Path) -> Iterator[str]:
    """``file:line: statement`` for each import of a forbidden package in ``path``:
    ``import x``, ``from x import y``, and ``importlib.import_module("x")`` /
    ``__import__("x")`` with a literal name."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):
        names: list[str | None] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        if any(_forbidden(name) for name in names):
            yield f"{where}:{node.lineno}: {ast.get_source_segment(source, node)}"


def test_production_modules_do_not_import_devtools_or_localstripe() -> None:
    files = production_files()
    scanned = {path.relative_to(ROOT).parts[0] for path in files}
    assert scanned >= set(PRODUCTION_PACKAGES), f"no production files found in {set(PRODUCTION_PACKAGES) - scanned}"

    offending = [hit for path in files for hit in forbidden_imports(path)]

    assert not offending, (
        "development-only packages imported by production code (devtools/ and localstripe may only be "
        "imported from devtools/ and tests; launch the fake Stripe as a subprocess instead):\n  "
        + "\n  ".join(offending)
    )


def test_the_check_finds_such_imports() -> None:
    """The detector itself: our launcher imports localstripe, and the package re-exports itself."""
    app_hits = list(forbidden_imports(ROOT / "devtools" / "localstripe" / "app.py"))
    init_hits = list(forbidden_imports(ROOT / "devtools" / "localstripe" / "__init__.py"))

    assert any(": from localstripe import" in hit for hit in app_hits), app_hits
    assert any(": from devtools.localstripe." in hit for hit in init_hits), init_hits


def test_devtools_and_localstripe_are_not_installed_apps() -> None:
    offending = [app for app in settings.INSTALLED_APPS if _forbidden(app)]

    assert not offending, f"development-only packages in INSTALLED_APPS: {offending}"
