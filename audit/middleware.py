"""Sets the audit source for each request: a request id and the client IP.

The IP is REMOTE_ADDR; a proxy's X-Forwarded-For is never trusted as sent (the API issue
adds a trusted-proxy setting)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audit.context import audit_source


def _valid_ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


class AuditContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = uuid.uuid4().hex
        with audit_source(source_ip=_valid_ip(request.META.get("REMOTE_ADDR")), request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
