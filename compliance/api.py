"""Access reviews over the API, for compliance auditors (who hold no console access: the
console is the operators') and operators (45 CFR 164.308(a)(1)(ii)(D))."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.models import AccessReview
from compliance.selectors import may_review
from compliance.services import access_review_export_read, access_review_record
from config.api import NoStoreMixin, Pagination
from config.errors import NotFoundError, PermissionDeniedError


class AccessReviewSerializer(serializers.ModelSerializer[AccessReview]):
    class Meta:
        model = AccessReview
        fields = (
            "id",
            "reviewer_label",
            "reviewed_at",
            "period_start",
            "period_end",
            "findings",
            "follow_ups",
            "corrects",
            "export_rows",
            "export_sha256",
        )


class AccessReviewCreateSerializer(serializers.Serializer[Any]):
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    findings = serializers.CharField(allow_blank=True, trim_whitespace=False)
    follow_ups = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    corrects = serializers.IntegerField(required=False, allow_null=True, default=None)


def _require_reviewer(request: Request) -> None:
    if not may_review(request.user):
        raise PermissionDeniedError("Only operators and compliance auditors may read or record access reviews.")


class AccessReviewsView(NoStoreMixin, ListAPIView[AccessReview]):
    serializer_class = AccessReviewSerializer
    pagination_class = Pagination

    def get_queryset(self) -> Any:
        """Every access review, newest first (auditors and operators)."""
        _require_reviewer(self.request)
        return AccessReview.objects.order_by("-reviewed_at", "-pk")

    @extend_schema(request=AccessReviewCreateSerializer, responses={201: AccessReviewSerializer})
    def post(self, request: Request) -> Response:
        """Record a review of the audit trail over [period_start, period_end), the period's
        audit CSV attached with its SHA-256; append-only, PHI-guarded, audited."""
        _require_reviewer(request)
        data = AccessReviewCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        corrects = None
        if values["corrects"] is not None:
            corrects = AccessReview.objects.filter(pk=values["corrects"]).first()
            if corrects is None:
                raise NotFoundError(f"No access review {values['corrects']} to correct.", {"field": "corrects"})
        review = access_review_record(
            reviewer=request.user,
            period_start=values["period_start"],
            period_end=values["period_end"],
            findings=values["findings"],
            follow_ups=values["follow_ups"],
            corrects=corrects,
        )
        return Response(AccessReviewSerializer(review).data, status=status.HTTP_201_CREATED)


class AccessReviewExportView(NoStoreMixin, APIView):
    @extend_schema(responses={(200, "text/csv"): bytes})
    def get(self, request: Request, review_id: int) -> HttpResponse:
        """The audit CSV a review was made on, as it was reviewed (audited as a read)."""
        _require_reviewer(request)
        review = AccessReview.objects.filter(pk=review_id).first()
        if review is None:
            raise NotFoundError(f"No access review {review_id}.")
        response = HttpResponse(access_review_export_read(review=review, actor=request.user), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="access-review-{review.pk}.csv"'
        response["Cache-Control"] = "no-store"
        return response
