"""Exporting audit events as CSV, JSON or JSON Lines (spec §9: the auditor's export).

Rows are read a chunk at a time by keyset on `id` (oldest first), so an export of
millions of rows holds one chunk in memory and no long-lived cursor. The columns are
exactly the model's fields: audit rows hold no PHI, and nothing else is joined in.

CSV cells that a spreadsheet would run as a formula (starting with =, +, -, @, tab or
carriage return) are prefixed with a single quote (OWASP "CSV injection")."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.db.models import QuerySet

from audit.models import AuditEvent

EXPORT_FIELDS: tuple[str, ...] = tuple(field.name for field in AuditEvent._meta.concrete_fields)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
DEFAULT_CHUNK_SIZE = 2000


def iter_rows(
    queryset: QuerySet[AuditEvent], *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[list[dict[str, Any]]]:
    """The queryset's rows as plain values, oldest first, one chunk (list) at a time."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    base = queryset.order_by("id").values(*EXPORT_FIELDS)
    last_id: int | None = None
    while True:
        page = base if last_id is None else base.filter(id__gt=last_id)
        chunk = list(page[:chunk_size])
        if not chunk:
            return
        last_id = chunk[-1]["id"]
        yield chunk


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: _plain(row[name]) for name in EXPORT_FIELDS}


def csv_cell(value: Any) -> str:
    """One CSV cell: JSON for `data`, ISO 8601 UTC for times, '' for NULL, formulas defused."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(_plain(value))
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def stream_csv(queryset: QuerySet[AuditEvent], *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[str]:
    """A header line, then the rows; one string per chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_FIELDS)
    yield buffer.getvalue()
    for chunk in iter_rows(queryset, chunk_size=chunk_size):
        buffer.seek(0)
        buffer.truncate()
        writer.writerows([csv_cell(row[name]) for name in EXPORT_FIELDS] for row in chunk)
        yield buffer.getvalue()


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(json_row(row), ensure_ascii=False, separators=(",", ":"))


def stream_jsonl(queryset: QuerySet[AuditEvent], *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[str]:
    """JSON Lines: one object per line."""
    for chunk in iter_rows(queryset, chunk_size=chunk_size):
        yield "".join(_dumps(row) + "\n" for row in chunk)


def stream_json(queryset: QuerySet[AuditEvent], *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[str]:
    """One JSON array of objects, written as it is read."""
    yield "["
    separator = "\n"
    for chunk in iter_rows(queryset, chunk_size=chunk_size):
        parts = []
        for row in chunk:
            parts.append(separator + _dumps(row))
            separator = ",\n"
        yield "".join(parts)
    yield "\n]\n"
