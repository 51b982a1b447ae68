"""Sets the audit source for each request: a request id and the validated client IP.

The client IP is REMOTE_ADDR unless `TRUSTED_PROXY_COUNT` (N) says that N proxies of our
own stand in front of the application: then it is the Nth address from the right of
`X-Forwarded-For` (each trusted proxy appends the address it saw; everything to the left
of that is whatever the client chose to send). A header that is not made of IP addresses,
or has fewer than N of them, is ignored (REMOTE_ADDR is used) and never stored as sent.

django-auditlog's own middleware trusts the leftmost `X-Forwarded-For` entry and stores it
raw (a garbage value fails the insert on PostgreSQL); `AuditlogMiddleware` below gives it
the same validated IP and our request id instead."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from typing import Any

from auditlog.middleware import AuditlogMiddleware as _AuditlogMiddleware
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from audit.context import audit_source, current_source

# A header longer than this is garbage for any sane proxy chain: ignore it without parsing.
_MAX_FORWARDED_FOR = 2048


def _valid_ip(value: str | None) -> str | None:
    """The address in canonical form, or None when `value` is not exactly one IP address."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1 and "." in value:  # "203.0.113.7:443"
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None  # "fe80::1%eth0": a zone id means nothing off the host and does not fit inet
    return str(address)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address as far as our own proxies vouch for it (module docstring)."""
    remote = _valid_ip(request.META.get("REMOTE_ADDR"))
    trusted = int(getattr(settings, "TRUSTED_PROXY_COUNT", 0) or 0)
    if trusted <= 0:
        return remote
    header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if not header or len(header) > _MAX_FORWARDED_FOR:
        return remote
    hops = [part.strip() for part in header.split(",")]
    if len(hops) < trusted:
        return remote
    return _valid_ip(hops[-trusted]) or remote


def current_request_id() -> str | None:
    """django-auditlog's correlation id (AUDITLOG_CID_GETTER): our request or task id."""
    source = current_source()
    return source.request_id or source.task_id or None


class AuditContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = uuid.uuid4().hex
        with audit_source(source_ip=client_ip(request), request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class AuditlogMiddleware(_AuditlogMiddleware):
    """django-auditlog's middleware with our validated client IP and no client-sent port.

    Must come after AuditContextMiddleware (its correlation id is our request id)."""

    @staticmethod
    def _get_remote_addr(request: HttpRequest) -> str | None:
        if settings.AUDITLOG_DISABLE_REMOTE_ADDR:
            return None
        return client_ip(request)

    @staticmethod
    def _get_remote_port(request: HttpRequest) -> Any:
        return None  # X-Forwarded-Port is whatever the client sent; nothing vouches for it
