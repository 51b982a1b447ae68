"""One error family for services (rendered as {"message", "extra"} by the API handler)."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A refused request: bad input (400) unless a subclass says otherwise."""

    status_code = 400

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class NotFoundError(ApplicationError):
    status_code = 404


class ConflictError(ApplicationError):
    """The request is valid but the current state forbids it (HTTP 409)."""

    status_code = 409


class PermissionDeniedError(ApplicationError):
    status_code = 403


class ServiceUnavailableError(ApplicationError):
    """A dependency (the database, Stripe) is unavailable: HTTP 503, worth retrying after
    `retry_after_seconds` (sent as `Retry-After` where the responder knows it)."""

    status_code = 503

    def __init__(
        self, message: str, extra: dict[str, Any] | None = None, *, retry_after_seconds: int | None = None
    ) -> None:
        super().__init__(message, extra)
        self.retry_after_seconds = retry_after_seconds
