"""Operators see patients by billing reference, office and status only (spec §1, §5).

Minimum necessary: no clinical field (name, birth date, MRN, email, phone) is listed,
shown, searchable, filterable, or reachable through a URL lookup (`?last_name=…` is
refused, not applied), and nothing here writes: patients and their activation history
are the office staff's work, through the API."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin, TabularInline

from config.admin_mixins import ReadOnlyAdminMixin
from offices.admin import AuditedReadsMixin
from patients.models import ActivationInterval, Patient


def _open_interval() -> Exists:
    return Exists(ActivationInterval.objects.filter(patient=OuterRef("pk"), deactivated_at__isnull=True))


class RestrictedLookupsMixin:
    """Only the listed filters may be applied through the changelist's query string.

    Django lets a changelist URL filter on any local field (`?mrn__startswith=4`), which
    would let an operator probe clinical fields without ever seeing them."""

    allowed_lookups: tuple[str, ...] = ()

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.allowed_lookups


class PatientStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("inactive", "Inactive")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return queryset.filter(_is_active=True)
        if self.value() == "inactive":
            return queryset.filter(_is_active=False)
        return queryset


class ActivationIntervalInline(ReadOnlyAdminMixin, TabularInline):
    model = ActivationInterval
    fields = ("activated_at", "deactivated_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False


@admin.register(Patient)
class PatientAdmin(AuditedReadsMixin, RestrictedLookupsMixin, ReadOnlyAdminMixin, ModelAdmin):
    audit_read_action = "patient"

    # Every attribute that could name a field is spelled out, so no default brings PHI in.
    list_display = ("billing_ref", "office", "status", "created_at")
    list_display_links = ("billing_ref",)
    list_filter = ("office", PatientStatusFilter)
    list_select_related = ("office",)
    search_fields = ("billing_ref",)
    fields = ("billing_ref", "office", "status", "created_at")
    readonly_fields = fields
    inlines = (ActivationIntervalInline,)
    allowed_lookups = ("office__id__exact", "status")
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Patient]:
        return super().get_queryset(request).annotate(_is_active=_open_interval())

    @admin.display(description="Status", ordering="_is_active")
    def status(self, obj: Any) -> str:
        active = getattr(obj, "_is_active", None)
        if active is None:
            active = ActivationInterval.objects.filter(patient=obj, deactivated_at__isnull=True).exists()
        return "active" if active else "inactive"


class IntervalOpenFilter(admin.SimpleListFilter):
    title = "open"
    parameter_name = "open"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Open (active now)"), ("no", "Closed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(deactivated_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(deactivated_at__isnull=False)
        return queryset


@admin.register(ActivationInterval)
class ActivationIntervalAdmin(AuditedReadsMixin, RestrictedLookupsMixin, ReadOnlyAdminMixin, ModelAdmin):
    audit_read_action = "activation_history"

    list_display = ("id", "billing_ref", "office", "activated_at", "deactivated_at")
    list_filter = ("office", IntervalOpenFilter)
    list_select_related = ("patient", "office")
    search_fields = ("patient__billing_ref",)
    fields = ("billing_ref", "office", "activated_at", "deactivated_at")
    readonly_fields = fields
    date_hierarchy = "activated_at"
    allowed_lookups = (
        "office__id__exact",
        "open",
        "activated_at__year",
        "activated_at__month",
        "activated_at__day",
        "activated_at__gte",
        "activated_at__lt",
    )

    @admin.display(description="Patient (billing ref)", ordering="patient__billing_ref")
    def billing_ref(self, obj: ActivationInterval) -> str:
        return obj.patient.billing_ref
