"""API plumbing shared by every app: the error format, pagination, access resolution."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.utils.cache import add_never_cache_headers
from rest_framework import exceptions, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import ApplicationError
from config.outages import is_database_outage

logger = logging.getLogger("api")


class NoStoreMixin:
    """Billing and patient responses are never stored by browsers or proxies."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        add_never_cache_headers(response)
        response["Cache-Control"] = "no-store"
        return response


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _first_message(detail: Any, path: str = "") -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            label = key if key != "non_field_errors" else ""
            return _first_message(value, f"{path}.{label}".strip(".") if label else path)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], path)
    text = str(detail)
    return f"{path}: {text}" if path else text


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error as {"message": ..., "extra": ...} with the right status (one handler)."""
    if is_database_outage(exc):
        return None  # re-raised: config.outages.DatabaseOutageMiddleware answers 503 with Retry-After
    if isinstance(exc, ApplicationError):
        return Response({"message": exc.message, "extra": exc.extra}, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        # Unexpected: logged with its traceback; the client gets the same JSON shape and the
        # request id to quote, never a stack trace or an HTML page.
        logger.exception("unhandled API error", exc_info=exc)
        request = context.get("request")
        request_id = getattr(request, "META", {}).get("HTTP_X_REQUEST_ID", "") if request else ""
        from audit.context import current_source

        return Response(
            {
                "message": "Internal error; it has been logged.",
                "extra": {"request_id": current_source().request_id or request_id},
            },
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"message": _first_message(exc.detail), "extra": {"fields": exc.detail}}
    else:
        detail = getattr(exc, "detail", None)
        response.data = {"message": str(detail) if detail is not None else "Error.", "extra": {}}
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = 'Token realm="api"'
    return response
