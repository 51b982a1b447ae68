"""Operator console for companies and offices (spec §1: operators are staff users).

Office writes go through `offices.services` (creation, updates, role grants and revokes),
so the same rules and audit entries apply as through the API. Subscription state is the
billing engine's and is shown read-only. Billing actions on offices (preview, run,
one-off invoice) are added by `billing.admin`, which extends this admin: `offices`
imports neither `patients` nor `billing`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from guardian.shortcuts import get_users_with_perms
from unfold.admin import ModelAdmin
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from audit.services import audit_record
from config.errors import ApplicationError
from config.mfa.admin import MfaResetAdminMixin
from offices.models import COMPLIANCE_AUDITOR_GROUP, Company, Office, Role
from offices.services import office_create, office_member_grant, office_member_revoke, office_update

User = get_user_model()


# --- Shared: admin writes through services ---------------------------------------------


class ServiceModelForm(forms.ModelForm):
    """A model form whose save is a service call made during validation.

    The admin runs the whole change view in one transaction; calling the service here, in
    a savepoint, lets its ApplicationError/ConflictError come back as a form error on the
    page the operator was editing (not a 500, not a lost form). `save_model` then only
    takes the saved row's primary key."""

    service_call: Callable[[ServiceModelForm], models.Model] | None = None
    service_result: models.Model | None = None
    _service_done = False

    def full_clean(self) -> None:
        super().full_clean()
        if not self.is_bound or self._service_done or self.service_call is None or self.errors:
            return
        self._service_done = True
        try:
            with transaction.atomic():
                self.service_result = type(self).service_call(self)  # type: ignore[misc]
        except ApplicationError as exc:
            self.add_error(None, exc.message)

    def changed_model_fields(self, names: Sequence[str]) -> dict[str, Any]:
        """Cleaned values that differ from the row as it was when the form was built
        (compared after cleaning: 'USD' typed over 'usd' is no change)."""

        def comparable(value: Any) -> Any:
            return value.pk if isinstance(value, models.Model) else value

        return {
            name: self.cleaned_data[name]
            for name in names
            if name in self.fields
            and name in self.cleaned_data
            and comparable(self.cleaned_data[name]) != comparable(self.initial.get(name))
        }


class ServiceAdminMixin:
    """Wire a ServiceModelForm to `service_save(request, form, obj)` of the admin."""

    def service_save(self, request: HttpRequest, form: ServiceModelForm, obj: Any) -> models.Model:
        raise NotImplementedError

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form_class = super().get_form(request, obj, change=change, **kwargs)  # type: ignore[misc]
        admin_self = self

        def call(form: ServiceModelForm) -> models.Model:
            return admin_self.service_save(request, form, obj)

        return type(form_class.__name__, (form_class,), {"service_call": call})

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        saved = form.service_result
        if saved is None:  # pragma: no cover - validation runs the service before any save
            raise RuntimeError("the service did not run")
        obj.pk = saved.pk
        obj.refresh_from_db()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Related rows are written by the services, never by the admin's formsets."""


class AuditedReadsMixin:
    """Operators' reads of billing data and patient records are audited (spec §9): one
    entry per list page and per object page viewed, never with the page's content."""

    audit_read_action = ""

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        response = super().changelist_view(request, extra_context)  # type: ignore[misc]
        if request.method == "GET" and getattr(response, "status_code", 0) == 200:
            audit_record(
                action=f"{self.audit_read_action}.list_viewed",
                actor=request.user,
                target_type=self.model._meta.label,  # type: ignore[attr-defined]
                data={"via": "admin"},
            )
        return response

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None) -> Any:
        response = super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
        if request.method == "GET" and getattr(response, "status_code", 0) == 200:
            model = self.model  # type: ignore[attr-defined]
            office_id = (
                model._default_manager.filter(pk=object_id).values_list(self.audit_office_path, flat=True).first()
            )
            audit_record(
                action=f"{self.audit_read_action}.viewed",
                actor=request.user,
                target_type=model._meta.label,
                target_id=object_id,
                office_id=office_id,
                data={"via": "admin"},
            )
        return response

    audit_office_path = "office_id"


# --- Companies -------------------------------------------------------------------------


@admin.register(Company)
class CompanyAdmin(ModelAdmin):
    list_display = ("name", "office_count", "created_at")
    search_fields = ("name",)
    list_filter = ("created_at",)
    readonly_fields = ("created_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Company]:
        return super().get_queryset(request).annotate(_office_count=Count("offices"))

    @admin.display(description="Offices", ordering="_office_count")
    def office_count(self, obj: Any) -> int:
        return int(obj._office_count)


# --- Offices ---------------------------------------------------------------------------

ROLE_CHOICES = [("", "—"), *Role.choices]
EDITABLE_OFFICE_FIELDS = ("name", "company", "billing_email", "timezone", "collection_method", "days_until_due")
STATE_FIELDS = (
    "subscription_status",
    "current_plan",
    "pending_plan",
    "billing_cycle_anchor_date",
    "subscribed_at",
    "trial_ends_at",
    "trial_used",
    "cancel_at_period_end",
    "canceled_at",
    "past_due_since",
    "payment_provider_customer_id",
    "payment_provider_subscription_id",
    "created_at",
    "updated_at",
)


def office_members(office: Office) -> list[tuple[Any, list[str]]]:
    """Users holding a per-office role (django-guardian object permissions), by username."""
    if office.pk is None:
        return []
    held = cast(
        "dict[Any, list[str]]",  # attach_perms=True answers {user: [codename, ...]}
        get_users_with_perms(office, attach_perms=True, with_group_users=False, only_with_perms_in=Role.values),
    )
    return sorted(((user, sorted(perms)) for user, perms in held.items()), key=lambda item: item[0].get_username())


class OfficeForm(ServiceModelForm):
    grant_user = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True).order_by(User.USERNAME_FIELD),
        required=False,
        label="Grant a role to",
    )
    grant_role = forms.ChoiceField(choices=ROLE_CHOICES, required=False, label="Role")
    revoke = forms.MultipleChoiceField(
        choices=[],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Revoke",
        help_text="Tick a role to revoke it (through offices.services.office_member_revoke).",
    )

    class Meta:
        model = Office
        fields = EDITABLE_OFFICE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["revoke"].choices = [  # type: ignore[attr-defined]
            (f"{user.pk}:{role}", f"{user.get_username()}: {role}")
            for user, roles in office_members(self.instance)
            for role in roles
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("grant_user")) != bool(data.get("grant_role")):
            raise forms.ValidationError("To grant a role, choose both a user and a role.")
        return data


@admin.register(Office)
class OfficeAdmin(ServiceAdminMixin, ModelAdmin):
    form = OfficeForm
    list_display = (
        "name",
        "company",
        "subscription_status",
        "current_plan",
        "pending_plan",
        "billing_cycle_anchor_date",
        "trial_ends_at",
        "cancel_at_period_end",
        "collection_method",
        "timezone",
    )
    list_filter = ("subscription_status", "timezone", "collection_method", "cancel_at_period_end")
    list_select_related = ("company", "current_plan", "pending_plan")
    search_fields = ("name",)
    readonly_fields = (*STATE_FIELDS, "members")
    fieldsets = (
        (None, {"fields": EDITABLE_OFFICE_FIELDS}),
        ("Subscription (billing engine, read-only)", {"fields": STATE_FIELDS}),
        ("Per-office roles", {"fields": ("members", "grant_user", "grant_role", "revoke")}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:  # roles and state exist once the office does
            return ((None, {"fields": EDITABLE_OFFICE_FIELDS}),)
        return self.fieldsets

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # an office is a billing customer with history: it is never deleted

    @admin.display(description="Members (office roles)")
    def members(self, obj: Office) -> str:
        rows = office_members(obj)
        if not rows:
            return "No user holds a role in this office."
        return format_html(
            "<ul>{}</ul>",
            format_html_join("", "<li>{}: {}</li>", ((user.get_username(), ", ".join(roles)) for user, roles in rows)),
        )

    def service_save(self, request: HttpRequest, form: ServiceModelForm, obj: Any) -> models.Model:
        data = form.cleaned_data
        if obj is None:
            office = office_create(
                name=data["name"],
                billing_email=data["billing_email"],
                timezone=data["timezone"],
                company=data.get("company"),
                collection_method=data["collection_method"],
                days_until_due=data["days_until_due"],
                actor=request.user,
            )
        else:
            office = obj
            changes = form.changed_model_fields(EDITABLE_OFFICE_FIELDS)
            if changes:
                office = office_update(office=obj, actor=request.user, **changes)
        for value in data.get("revoke") or []:
            user_id, role = value.split(":", 1)
            office_member_revoke(office=office, user=User.objects.get(pk=user_id), role=role, actor=request.user)
        if data.get("grant_user") and data.get("grant_role"):
            office_member_grant(office=office, user=data["grant_user"], role=data["grant_role"], actor=request.user)
        return office


# --- Operators and auditors: who may see everything is audited (spec §9) -------------

OPERATOR_FLAGS = ("is_staff", "is_superuser", "is_active")


class AuditedUserAdmin(MfaResetAdminMixin, DjangoUserAdmin, ModelAdmin):
    """Django's user admin (in the console's theme), with every change of operator status (`is_staff`,
    `is_superuser`, `is_active`), group membership (the compliance-auditor group among
    them) and direct permissions audited with the operator who made it (spec §9)."""

    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm
    # Operator MFA (config/mfa/admin.py): who has enrolled, and a superuser's reset.
    list_display = ("username", "email", "first_name", "last_name", "is_staff", "mfa_enrolled")
    actions = ["mfa_reset"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = User.objects.filter(pk=obj.pk).values(*OPERATOR_FLAGS).first() if change and obj.pk else None
        super().save_model(request, obj, form, change)
        after = {flag: getattr(obj, flag) for flag in OPERATOR_FLAGS}
        if before is None:
            audit_record(
                action="user.created", actor=request.user, target=obj, data={"username": obj.username, **after}
            )
            return
        changes = {flag: [before[flag], after[flag]] for flag in OPERATOR_FLAGS if before[flag] != after[flag]}
        if changes:
            audit_record(
                action="user.operator_status_changed",
                actor=request.user,
                target=obj,
                data={"username": obj.username, "changes": changes},
            )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        user = form.instance
        groups_before = set(user.groups.values_list("name", flat=True))
        perms_before = set(user.user_permissions.values_list("codename", flat=True))
        super().save_related(request, form, formsets, change)
        groups_after = set(user.groups.values_list("name", flat=True))
        perms_after = set(user.user_permissions.values_list("codename", flat=True))
        if groups_after != groups_before:
            audit_record(
                action="user.groups_changed",
                actor=request.user,
                target=user,
                data={
                    "username": user.username,
                    "added": sorted(groups_after - groups_before),
                    "removed": sorted(groups_before - groups_after),
                    "auditor": COMPLIANCE_AUDITOR_GROUP in groups_after,
                },
            )
        if perms_after != perms_before:
            audit_record(
                action="user.permissions_changed",
                actor=request.user,
                target=user,
                data={
                    "username": user.username,
                    "added": sorted(perms_after - perms_before),
                    "removed": sorted(perms_before - perms_after),
                },
            )


class ThemedGroupAdmin(DjangoGroupAdmin, ModelAdmin):
    """Django's group admin in the console's theme (the compliance-auditor group lives here)."""


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
if admin.site.is_registered(Group):
    admin.site.unregister(Group)
admin.site.register(Group, ThemedGroupAdmin)
