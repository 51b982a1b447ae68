"""A database outage answers 503 with a JSON body and `Retry-After`, never an HTML 500 or a
hang, and the application recovers by itself when the database returns.

`DatabaseOutageMiddleware` (listed right after SecurityMiddleware, so it sees what every
other middleware does) turns a database that cannot be reached into

    HTTP/1.1 503 Service Unavailable
    Retry-After: 5

    {"message": "The database is unavailable; try again in a few seconds.",
     "extra": {"dependency": "database", "retry_after": 5, "request_id": "…"}}

It recognises an outage three ways:
- a view raised one (`process_exception`): the Stripe webhook and other plain Django views;
- a middleware raised one (Django's `got_request_exception` signal notes it on the request);
- any other 5xx (DRF's exception handler in config/api.py renders the exception as a 500
  before a middleware sees it) while one of this thread's connections had an error and is
  now unusable or was never opened (`errors_occurred`, Django's own flag).

Broken connections are then closed, so the next request opens a new one: nothing to
restart (Django's `close_old_connections` at the end of the request does the same; doing
it here also covers persistent connections, `CONN_MAX_AGE` > 0). To fail fast rather than
wait on an unreachable host, PostgreSQL needs a connect timeout (`?connect_timeout=5` in
`DATABASE_URL`, which django-environ passes to libpq).

What counts as an outage (`is_database_outage`): Django's and psycopg's
`OperationalError` and `InterfaceError` (refused or lost connections, the server shutting
down, too many clients, timeouts, deadlocks: all worth retrying), except SQLite's reports
of mistakes in the SQL itself ("no such table" is an `OperationalError` there too), which
stay 500s. Programming and integrity errors are never outages."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from django.core.signals import got_request_exception
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

from config.errors import ServiceUnavailableError

logger = logging.getLogger("config.outages")

RETRY_AFTER_SECONDS = 5
MESSAGE = "The database is unavailable; try again in a few seconds."

_DRIVER_ERRORS: tuple[type[Exception], ...]
try:
    import psycopg
except ImportError:  # pragma: no cover - psycopg is a dependency; SQLite-only installs work too
    _DRIVER_ERRORS = ()
else:
    _DRIVER_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)

DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, *_DRIVER_ERRORS)

# SQLite raises OperationalError for unavailability and for bad SQL alike: only these are the former.
_SQLITE_UNAVAILABLE = ("database is locked", "database table is locked", "unable to open database", "disk i/o error")

_NOTED = "_database_outage"  # request attribute set by _note_exception
# Not copied from the 500 being replaced: they describe its body, or the 503 sets its own.
_REPLACED_HEADERS = frozenset(
    {"content-type", "content-length", "content-disposition", "content-encoding", "etag"}
    | {"retry-after", "cache-control"}
)


def is_database_outage(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached or used right now (module docstring)."""
    if not isinstance(exc, DATABASE_ERRORS):
        return False
    sqlite_error = next((e for e in (exc, exc.__cause__) if isinstance(e, sqlite3.Error)), None)
    if sqlite_error is not None:
        text = str(sqlite_error).lower()
        return any(marker in text for marker in _SQLITE_UNAVAILABLE)
    return True


def database_unavailable(request_id: str | None = None) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        MESSAGE,
        {"dependency": "database", "retry_after": RETRY_AFTER_SECONDS, "request_id": request_id or ""},
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )


def error_response(error: ServiceUnavailableError) -> JsonResponse:
    """The project's error shape, `{"message", "extra"}`, with `Retry-After` and no caching."""
    response = JsonResponse({"message": error.message, "extra": error.extra}, status=error.status_code)
    if error.retry_after_seconds is not None:
        response["Retry-After"] = str(error.retry_after_seconds)
    response["Cache-Control"] = "no-store"
    return response


def _unusable(conn: Any) -> bool:
    raw = conn.connection
    if raw is None:
        return True  # the connection could not even be opened
    if getattr(raw, "broken", False) or getattr(raw, "closed", False):  # psycopg knows without a round trip
        return True
    return not conn.is_usable()


def broken_connections() -> list[str]:
    """Aliases of this thread's connections that failed and cannot be used now."""
    return [conn.alias for conn in connections.all(initialized_only=True) if conn.errors_occurred and _unusable(conn)]


def discard_broken_connections() -> None:
    """Close connections that failed and cannot be used, so the next query reconnects."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred and _unusable(conn):
            try:
                conn.close()
            except DatabaseError:  # closing a dead socket; Django forgets it either way
                logger.debug("closing broken connection %s failed", conn.alias, exc_info=True)


def _forget_stale_errors() -> None:
    """A connection that failed to open in an earlier request on this thread keeps its
    error flag until it connects again: forget it, so it is not taken as this request's."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            conn.errors_occurred = False


def _note_exception(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """got_request_exception: a middleware (or a view) raised; Django is rendering a 500."""
    exc = sys.exc_info()[1]
    if request is not None and exc is not None and is_database_outage(exc):
        setattr(request, _NOTED, exc)


def _request_id() -> str:
    from audit.context import current_source  # config imports nothing of audit at import time

    return current_source().request_id or ""


class DatabaseOutageMiddleware:
    """See the module docstring. Sync only (the application is WSGI)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        got_request_exception.connect(_note_exception, dispatch_uid="config.outages.note_exception")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        _forget_stale_errors()
        response = self.get_response(request)
        if response.status_code < 500 or response.status_code == 503:
            return response
        noted: BaseException | None = getattr(request, _NOTED, None)
        aliases = broken_connections()
        if noted is None and not aliases:
            return response  # a 500 that is not about the database: left as it is
        logger.warning(
            "database unavailable (%s; connections %s): answering 503 to %s %s",
            f"{type(noted).__name__}: {noted}" if noted else "an error on a connection now unusable",
            ", ".join(aliases) or "-",
            request.method,
            request.path,
        )
        discard_broken_connections()
        replacement = error_response(database_unavailable(response.get("X-Request-ID")))
        for header, value in response.items():
            if header.lower() not in _REPLACED_HEADERS:
                replacement[header] = value
        return replacement

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_outage(exception):
            return None
        logger.warning(
            "database unavailable (%s: %s): answering 503 to %s %s",
            type(exception).__name__,
            exception,
            request.method,
            request.path,
        )
        discard_broken_connections()
        return error_response(database_unavailable(_request_id()))
