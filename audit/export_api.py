"""The audit trail as a download: `GET /api/v1/audit-events/export/?format=csv|json|jsonl`.

Same access and filters as the list (`AuditEventsView`: auditors and operators see every
office, an office billing admin only their offices; `office`, `action`, `actor`, `since`,
`until`). The export itself is audited before the first byte is sent."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.db.models import Max, QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from audit.api import AuditEventSerializer, AuditEventsView
from audit.export import stream_csv, stream_json, stream_jsonl
from audit.models import AuditEvent
from audit.services import audit_record
from config.errors import ApplicationError

Streamer = Callable[[QuerySet[AuditEvent]], Iterator[str]]
FORMATS: dict[str, tuple[Streamer, str]] = {
    "csv": (stream_csv, "text/csv; charset=utf-8"),
    "json": (stream_json, "application/json"),
    "jsonl": (stream_jsonl, "application/x-ndjson"),
}
FILTERS = ("office", "action", "actor", "since", "until")


class _FormatNamesTheFile(DefaultContentNegotiation):
    """`?format=` is the export's file format here, not a DRF renderer: errors stay JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class AuditEventsExportView(AuditEventsView):
    """The filtered audit trail as a CSV or JSON download (spec §9)."""

    pagination_class = None  # type: ignore[assignment]  # a stream of every matching row, not a page
    content_negotiation_class = _FormatNamesTheFile

    @extend_schema(
        parameters=[
            OpenApiParameter("format", str, enum=list(FORMATS), description="File format (default csv)."),
            OpenApiParameter("office", int),
            OpenApiParameter("action", str),
            OpenApiParameter("actor", str, description="Actor label (username)."),
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="ts ≥ since (ISO 8601 with offset)."),
            OpenApiParameter("until", OpenApiTypes.DATETIME, description="ts < until (ISO 8601 with offset)."),
        ],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/json"): AuditEventSerializer(many=True),
            (200, "application/x-ndjson"): OpenApiTypes.STR,
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> StreamingHttpResponse:  # type: ignore[override]
        """Stream the filtered events as a file attachment, oldest first (spec §9)."""
        fmt = request.query_params.get("format", "csv")
        if fmt not in FORMATS:
            raise ApplicationError(f"'format' must be one of {', '.join(FORMATS)}.", {"field": "format"})
        queryset = self.get_queryset()  # access and filters, exactly as the list
        # Fix the rows before auditing, so the export's own entry is not in it and the
        # count recorded is the count sent.
        boundary = AuditEvent.objects.aggregate(top=Max("id"))["top"] or 0
        queryset = queryset.filter(id__lte=boundary)
        rows = queryset.count()
        filters = {name: request.query_params[name][:150] for name in FILTERS if request.query_params.get(name)}
        office = filters.get("office")
        audit_record(
            action="audit.exported",
            actor=request.user,
            office_id=int(office) if office is not None else None,  # already validated by get_queryset
            data={"format": fmt, "filters": filters, "rows": rows},
        )
        stream, content_type = FORMATS[fmt]
        response = StreamingHttpResponse(stream(queryset), content_type=content_type)
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="audit-events-{stamp}.{fmt}"'
        add_never_cache_headers(response)
        response["Cache-Control"] = "no-store"
        response["X-Export-Rows"] = str(rows)
        return response
