"""Access reviews and the evidence export in the operator console (issue 12, items 3, 4).

A review is recorded once and never edited or deleted (a correction is a new review that
names the one it corrects); the add form goes through `access_review_record`. The
evidence page downloads one month's archive (`evidence_export_create`, audited)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.admin import ModelAdmin
from unfold.widgets import UnfoldAdminSingleDateWidget, UnfoldAdminTextInputWidget

from billing.phi_guard import PhiRefused
from compliance.evidence import parse_month
from compliance.models import AccessReview
from compliance.selectors import may_review
from compliance.services import (
    _validate_period,
    access_review_check_text,
    access_review_export_read,
    access_review_record,
    evidence_export_create,
)
from config.admin_mixins import ConsoleFormMixin
from config.errors import ApplicationError


def _utc_midnight(day: Any) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


class AccessReviewForm(forms.ModelForm):
    """The period as UTC dates, first and last day included: [from 00:00, through+1 00:00)."""

    period_from = forms.DateField(label="Period from (UTC date)", widget=UnfoldAdminSingleDateWidget)
    period_through = forms.DateField(
        label="Period through (UTC date, included)",
        widget=UnfoldAdminSingleDateWidget,
        help_text="The review covers the audit trail from the first day 00:00 UTC up to the end of this day.",
    )
    actor: Any = None

    class Meta:
        model = AccessReview
        fields = ["findings", "follow_ups", "corrects"]
        help_texts = {
            "findings": "What the review found. Checked for patient information (refused if any): "
            "name patients by billing reference only.",
            "follow_ups": "Actions to take, with owners and dates. Checked like the findings.",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start_day, through_day = data.get("period_from"), data.get("period_through")
        if start_day is None or through_day is None:
            return data
        start, end = _utc_midnight(start_day), _utc_midnight(through_day) + timedelta(days=1)
        # A period ending today is reviewed up to now: nothing after now exists yet.
        end = min(end, timezone.now())
        try:
            _validate_period(start, end, timezone.now())
        except ApplicationError as exc:
            self.add_error("period_through", exc.message)
            return data
        data["period_start"], data["period_end"] = start, end
        findings = data.get("findings") or ""
        if findings:
            try:
                access_review_check_text(
                    findings=findings,
                    follow_ups=data.get("follow_ups") or "",
                    actor=self.actor,
                    period_start=start,
                    period_end=end,
                )
            except PhiRefused as exc:
                self.add_error(exc.field_name if exc.field_name in self.fields else None, exc.message)
        return data


class EvidenceMonthForm(ConsoleFormMixin, forms.Form):
    month = forms.CharField(
        label="Month (UTC calendar month, YYYY-MM)",
        max_length=20,
        widget=UnfoldAdminTextInputWidget(attrs={"placeholder": "2026-11"}),
    )

    def clean_month(self) -> str:
        value = str(self.cleaned_data["month"])
        try:
            parse_month(value)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from None
        return value


@admin.register(AccessReview)
class AccessReviewAdmin(ModelAdmin):
    """Information-system activity reviews (45 CFR 164.308(a)(1)(ii)(D)): append-only."""

    list_display = ("id", "reviewed_at", "reviewer_label", "period_start", "period_end", "export_rows", "short_sha")
    list_filter = ("reviewed_at",)
    search_fields = ("reviewer_label", "findings")
    date_hierarchy = "reviewed_at"
    readonly_fields = (
        "reviewer_label",
        "reviewed_at",
        "period_start",
        "period_end",
        "findings",
        "follow_ups",
        "corrects",
        "export_rows",
        "export_last_event_id",
        "export_sha256",
        "export_download",
    )
    form = AccessReviewForm
    list_before_template = "admin/compliance/_reviews_before_list.html"

    # --- who may ----------------------------------------------------------------------

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_review(request.user) or super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_review(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # append-only: a correction is a new review

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # --- the add form -----------------------------------------------------------------

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ("period_from", "period_through", "findings", "follow_ups", "corrects")
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is not None:
            kwargs.update(form=forms.ModelForm, fields=[])  # the change page only shows the review
            return super().get_form(request, obj, change=change, **kwargs)
        form = super().get_form(request, obj, change=change, **kwargs)
        return type("AccessReviewFormFor", (form,), {"actor": request.user})

    def save_model(self, request: HttpRequest, obj: AccessReview, form: Any, change: bool) -> None:
        """Record the review through the service (who: the logged-in user; the period's
        audit CSV attached with its SHA-256; audited)."""
        data = form.cleaned_data
        review = access_review_record(
            reviewer=request.user,
            period_start=data["period_start"],
            period_end=data["period_end"],
            findings=data["findings"],
            follow_ups=data.get("follow_ups") or "",
            corrects=data.get("corrects"),
        )
        for model_field in AccessReview._meta.concrete_fields:  # the admin logs and redirects with obj
            setattr(obj, model_field.attname, getattr(review, model_field.attname))
        obj._state.adding = False

    # --- displays ---------------------------------------------------------------------

    @admin.display(description="Export SHA-256")
    def short_sha(self, obj: AccessReview) -> str:
        return f"{obj.export_sha256[:16]}…"

    @admin.display(description="Audit export reviewed")
    def export_download(self, obj: AccessReview) -> str:
        url = reverse("admin:compliance_accessreview_export", args=[obj.pk])
        return format_html('<a href="{}" class="text-primary-600">Download the CSV ({} rows)</a>', url, obj.export_rows)

    # --- extra pages ------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        return [
            path("evidence/", self.admin_site.admin_view(self.evidence_view), name="compliance_evidence_export"),
            path(
                "<int:pk>/export.csv",
                self.admin_site.admin_view(self.export_view),
                name="compliance_accessreview_export",
            ),
            *super().get_urls(),
        ]

    def export_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The audit CSV attached to a review, byte for byte as reviewed (audited read)."""
        if not may_review(request.user):
            raise PermissionDenied
        review = AccessReview.objects.filter(pk=pk).first()
        if review is None:
            return HttpResponse("No such review.", status=404, content_type="text/plain")
        body = access_review_export_read(review=review, actor=request.user)
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="access-review-{review.pk}-audit.csv"'
        response["Cache-Control"] = "no-store"
        return response

    def evidence_view(self, request: HttpRequest) -> HttpResponse:
        """One month's evidence archive (zip) for a compliance auditor; audited as a read."""
        if not may_review(request.user):
            raise PermissionDenied
        form = EvidenceMonthForm(request.GET or None)
        error = ""
        if form.is_bound and form.is_valid():
            try:
                name, archive = evidence_export_create(month=form.cleaned_data["month"], actor=request.user)
            except ApplicationError as exc:
                error = exc.message
            else:
                response = HttpResponse(archive, content_type="application/zip")
                response["Content-Disposition"] = f'attachment; filename="{name}"'
                response["Cache-Control"] = "no-store"
                return response
        context = {
            **self.admin_site.each_context(request),
            "title": "Compliance evidence for one month",
            "opts": self.model._meta,
            "form": form,
            "error": error,
            "media": self.media + form.media,
        }
        status = 400 if error or form.errors else 200
        return TemplateResponse(request, "admin/compliance/evidence_export.html", context, status=status)
