"""Where an action comes from (request id, validated client IP, Celery task id)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class AuditSource:
    source_ip: str | None = None
    request_id: str = ""
    task_id: str = ""


_EMPTY = AuditSource()
_current: ContextVar[AuditSource] = ContextVar("audit_source")


def current_source() -> AuditSource:
    return _current.get(_EMPTY)


@contextlib.contextmanager
def audit_source(**fields: str | None) -> Iterator[AuditSource]:
    token = _current.set(replace(_current.get(_EMPTY), **fields))  # type: ignore[arg-type]
    try:
        yield _current.get(_EMPTY)
    finally:
        _current.reset(token)
