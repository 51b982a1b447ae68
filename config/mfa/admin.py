"""Operator MFA in the console's user pages: a column showing who has enrolled, and a
superuser's action to reset another operator's MFA (a lost phone) with a required reason.

django-otp's own device pages are not registered (config/console.py hides them): they
would show and edit the authenticator secrets and the recovery codes' rows."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from config.errors import ApplicationError
from config.mfa.forms import MfaResetForm
from config.mfa.selectors import mfa_is_enrolled
from config.mfa.services import mfa_reset


class MfaResetAdminMixin:
    """For the user admin: the `mfa_reset` action (superusers only) and the `mfa_enrolled` column."""

    @admin.display(description="MFA", boolean=True)
    def mfa_enrolled(self, obj: Any) -> bool:
        return mfa_is_enrolled(user=obj)

    def has_mfa_reset_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    @admin.action(description="Reset MFA of selected operators…", permissions=("mfa_reset",))
    def mfa_reset(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        """Remove the selected operators' authenticators and recovery codes through
        `mfa_reset`, after a page asking for the reason; each enrols again at next login."""
        users = list(queryset.order_by("pk"))
        form = MfaResetForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            done: list[str] = []
            for user in users:
                try:
                    mfa_reset(user=user, actor=request.user, reason=form.cleaned_data["reason"])
                except ApplicationError as exc:
                    self.message_user(request, f"{user.get_username()}: {exc.message}", messages.WARNING)  # type: ignore[attr-defined]
                else:
                    done.append(user.get_username())
            if done:
                self.message_user(  # type: ignore[attr-defined]
                    request,
                    f"MFA reset for {len(done)} operator(s): {', '.join(done)}. They enrol again at their next login.",
                    messages.SUCCESS,
                )
            return None
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": f"Reset MFA of {len(users)} operator(s)",
            "opts": self.model._meta,  # type: ignore[attr-defined]
            "operators": [
                {"pk": user.pk, "username": user.get_username(), "enrolled": mfa_is_enrolled(user=user)}
                for user in users
            ],
            "operators_count": str(len(users)),
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,  # type: ignore[attr-defined]
        }
        return TemplateResponse(request, "admin/mfa/reset.html", context)
