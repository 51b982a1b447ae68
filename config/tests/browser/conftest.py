"""Browser tests of the operator console (issue 9): Playwright's sync API driving Debian's
chromium (never a downloaded browser) against a live server of the app on the test database.

Every test that uses `page` fails when the page logged a console error or an uncaught
exception, or when a request to the app's own origin failed or answered >= 400 (unless
the test declared it with `expect_status`). A full-page screenshot of the last page is
saved to var/screenshots/<test name>.png, pass or fail.

The server is pytest-django's `live_server` (a thread of this process), not a `runserver`
subprocess: it serves the very test database the test seeds — SQLite file or PostgreSQL,
whatever DATABASE_URL / TEST_SQLITE_PATH chose — with no second settings path to keep in
step, serves static files through the staticfiles finders (no collectstatic), and
pytest-django's flush after each `django_db(transaction=True)` test resets what both saw.
A subprocess would need the test database's name, could not see rows of an uncommitted
test transaction either, and would add seconds of start-up and a process to clean up.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, Response
    from pytest_django.live_server_helper import LiveServer

    from patients.models import Patient

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
INSTALL_CHROMIUM = "install Debian's chromium: `apt-get install chromium` (or point CHROMIUM_PATH at a chromium binary)"


# --- one browser for the browser tests -----------------------------------------------------


@pytest.fixture(scope="package")
def playwright_instance() -> Generator[Playwright]:
    """Playwright's sync API, started once for this package and stopped after its last test.

    While it runs, Playwright keeps an asyncio loop *running* in this (the test) thread, so
    Django's async-safety check refuses every ORM call the test makes (seeding, creating the
    operator, pytest-django's flush) with SynchronousOnlyOperation, although nothing here is
    async. DJANGO_ALLOW_ASYNC_UNSAFE switches that check off — only while Playwright runs:
    package scope stops Playwright (so the loop) and restores the variable after the last
    browser test, so the rest of the suite keeps both the check and a thread with no loop.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "browser tests need Playwright (PyPI `playwright`, in the project's dev extras): pip install -e '.[dev]'"
        )
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Generator[Browser]:
    """Debian's chromium, headless. Never `playwright install`: no browser is downloaded."""
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.skip(f"browser tests need chromium at {path}: {INSTALL_CHROMIUM}")
    browser = playwright_instance.chromium.launch(
        executable_path=path,
        headless=True,
        # Root in a container: chromium's sandbox needs user namespaces it does not get, and
        # /dev/shm is often 64 MB there, which crashes renderers of long pages.
        args=["--no-sandbox", "--disable-dev-shm-usage"],
    )
    try:
        yield browser
    finally:
        browser.close()


# --- what a page did wrong ------------------------------------------------------------------


@dataclass
class BrowserLog:
    origin: str
    problems: list[str] = field(default_factory=list)
    # Statuses the test said it expects (e.g. a 404 it provokes), each consumed by one response.
    expected: list[int] = field(default_factory=list)
    _seen: list[int] = field(default_factory=list)

    def own(self, url: str) -> bool:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" == self.origin

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # Chromium echoes every failed load as a console error; a response the test declared
        # with expect_status is not a problem here either (the response handler accounts for it).
        status = re.search(r"status of (\d{3})", message.text)
        if message.text.startswith("Failed to load resource") and status and self._declared(int(status.group(1))):
            return
        where = message.location.get("url", "") if message.location else ""
        self.problems.append(f"console error: {message.text} ({where})")

    def on_pageerror(self, error: Exception) -> None:
        self.problems.append(f"uncaught exception in the page: {error}")

    def on_response(self, response: Response) -> None:
        if response.status < 400 or not self.own(response.url):
            return
        if response.status in self.expected:
            self.expected.remove(response.status)
            self._seen.append(response.status)
            return
        self.problems.append(f"HTTP {response.status} {response.request.method} {response.url}")

    def on_requestfailed(self, request: Request) -> None:
        # A same-origin request that never got an answer (refused, reset) is as broken as a 5xx.
        # ERR_ABORTED is the browser cancelling a load because the page navigated on.
        failure = request.failure or ""
        if self.own(request.url) and "ERR_ABORTED" not in failure:
            self.problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def _declared(self, status: int) -> bool:
        return status in self.expected or status in self._seen


LOG = pytest.StashKey[BrowserLog]()
PAGE = pytest.StashKey["Page"]()


@pytest.fixture
def page(browser: Browser, live_server: LiveServer, request: pytest.FixtureRequest) -> Generator[Page]:
    """A fresh context (cookies, storage) per test, on the live server's origin."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1366, "height": 900})
    context.set_default_timeout(10_000)  # a missing element fails in seconds, not Playwright's 30
    page = context.new_page()
    log = BrowserLog(origin=live_server.url.rstrip("/"))
    page.on("console", log.on_console)
    page.on("pageerror", log.on_pageerror)
    page.on("response", log.on_response)
    page.on("requestfailed", log.on_requestfailed)
    request.node.stash[LOG] = log
    request.node.stash[PAGE] = page
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def expect_status(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`expect_status(404)`: the next same-origin 404 is part of the test, not a problem.
    Call it once per expected response; an expected status that never came fails the test."""

    def declare(*statuses: int) -> None:
        log = request.node.stash.get(LOG, None)
        if log is None:
            raise RuntimeError("expect_status needs the `page` fixture")
        log.expected.extend(statuses)

    return declare


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, Any]:
    """After the test body (so the problems fail the test itself, not its teardown): save
    the screenshot, then fail on whatever the page logged."""
    try:
        result = yield
    finally:
        _screenshot(item)
    log = item.stash.get(LOG, None)
    if log is not None:
        problems = list(log.problems)
        problems += [f"expected HTTP {status} never happened" for status in log.expected]
        if problems:
            pytest.fail("the browser saw problems:\n  " + "\n  ".join(problems), pytrace=False)
    return result


def screenshot(page: Page, request: pytest.FixtureRequest, step: str) -> Path:
    """A full-page screenshot of one step of a walk: var/screenshots/<test name>--<step>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{_file_name(request.node.name)}--{_file_name(step)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _screenshot(item: pytest.Item) -> None:
    page = item.stash.get(PAGE, None)
    if page is None or page.is_closed():
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(SCREENSHOTS / f"{_file_name(item.name)}.png"), full_page=True)
    except Exception as exc:  # a screenshot must never hide the test's own outcome
        item.add_report_section("call", "screenshot", f"no screenshot: {exc}")


# --- helpers --------------------------------------------------------------------------------


def login_as_operator(page: Page, live_server: LiveServer, *, username: str = "operator-browser") -> Any:
    """Create a superuser and log in through the real /admin/login/ form, as a person would."""
    password = secrets.token_urlsafe(16)
    user = get_user_model().objects.create_superuser(
        username=username, password=password, email=f"{username}@vendor.example"
    )
    page.goto("/admin/login/?next=/admin/")
    # Labels and the button's role survive a theme change; CSS classes and ids may not.
    page.get_by_label(re.compile("username", re.I)).fill(username)
    page.get_by_label(re.compile("password", re.I)).fill(password)
    page.get_by_role("button", name=re.compile("log ?in|sign ?in", re.I)).click()
    page.wait_for_url(f"{live_server.url}/admin/")
    return user


def phi_found(page_text: str, patients: Iterable[Patient]) -> list[str]:
    """Which patient PHI appears in the text, as "<billing ref>: <field>" (never the value,
    so the report itself carries no PHI)."""
    text = " ".join(page_text.split())  # table cells and line breaks: one space
    leaks: list[str] = []
    for patient in patients:
        for label, pattern in _phi_patterns(patient):
            if re.search(pattern, text, re.IGNORECASE):
                leaks.append(f"{patient.billing_ref}: {label}")
    return leaks


def assert_no_phi(page_text: str, patients: Iterable[Patient]) -> None:
    """Patients may appear only by billing reference (patients/models.py, PHI_FIELDS)."""
    leaks = phi_found(page_text, patients)
    assert not leaks, "PHI in the page's visible text: " + ", ".join(leaks)


def _word(value: str) -> str:
    return rf"(?<![\w]){re.escape(value)}(?![\w])"


def _phi_patterns(patient: Patient) -> list[tuple[str, str]]:
    first, last = patient.first_name.strip(), patient.last_name.strip()
    patterns = [
        ("first_name + last_name", _word(f"{first} {last}")),
        ("last_name, first_name", _word(f"{last}, {first}")),
        ("mrn", _word(patient.mrn)),
    ]
    if len(last) >= 4:
        patterns.append(("last_name", _word(last)))
    patterns += [("date_of_birth", _word(form)) for form in _date_forms(patient.date_of_birth)]
    if patient.email:
        patterns.append(("email", _word(patient.email)))
    digits = re.sub(r"\D", "", patient.phone)[-10:]  # the national number, however it is punctuated
    if len(digits) >= 7:
        patterns.append(("phone", r"(?<!\d)" + r"[\s().+-]*".join(digits) + r"(?!\d)"))
    return patterns


def _date_forms(day: date) -> list[str]:
    """ISO, US (padded and not), and Django's en-us display forms ("July 23, 1984", "Jul. 23, 1984")."""
    return [
        day.isoformat(),
        f"{day.month:02d}/{day.day:02d}/{day.year}",
        f"{day.month}/{day.day}/{day.year}",
        f"{day:%B} {day.day}, {day.year}",
        f"{day:%b}. {day.day}, {day.year}",
    ]
