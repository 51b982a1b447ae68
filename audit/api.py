"""The audit trail for auditors and operators; billing admins see their offices' events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rest_framework import serializers
from rest_framework.generics import ListAPIView

from audit.models import DISPLAY_FIELDS, AuditEvent
from config.api import Pagination
from config.errors import ApplicationError, PermissionDeniedError


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    class Meta:
        model = AuditEvent
        fields = ["id", *DISPLAY_FIELDS]


class AuditEventsView(ListAPIView[AuditEvent]):
    """The audit trail for auditors and operators, filtered and paginated (spec §9)."""

    serializer_class = AuditEventSerializer
    pagination_class = Pagination

    def get_queryset(self) -> Any:
        # Imported here: audit is a sink and imports no app at module level.
        from offices.models import Role
        from offices.selectors import is_auditor, is_operator, offices_with_role

        user = self.request.user
        qs = AuditEvent.objects.all().order_by("-id")
        if not (is_operator(user) or is_auditor(user)):
            billing_offices = list(offices_with_role(user, Role.OFFICE_BILLING_ADMIN).values_list("pk", flat=True))
            if not billing_offices:
                raise PermissionDeniedError(
                    "Only auditors, operators and office billing admins can read the audit trail."
                )
            qs = qs.filter(office_id__in=billing_offices)
        params = self.request.query_params
        if params.get("office"):
            qs = qs.filter(office_id=_int(params["office"], "office"))
        if params.get("action"):
            qs = qs.filter(action=params["action"])
        if params.get("actor"):
            qs = qs.filter(actor_label=params["actor"])
        if params.get("since"):
            qs = qs.filter(ts__gte=_when(params["since"], "since"))
        if params.get("until"):
            qs = qs.filter(ts__lt=_when(params["until"], "until"))
        return qs


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ApplicationError(f"'{name}' must be an integer.", {"field": name}) from None


def _when(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApplicationError(f"'{name}' must be an ISO 8601 date-time.", {"field": name}) from None
    if parsed.tzinfo is None:
        raise ApplicationError(f"'{name}' needs a UTC offset.", {"field": name})
    try:
        return parsed.astimezone(UTC)  # offsets PostgreSQL cannot take (beyond ±15:59) included
    except (OverflowError, ValueError):
        raise ApplicationError(f"'{name}' is out of range.", {"field": name}) from None
