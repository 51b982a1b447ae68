"""The console's page of emails (spec §12, emails; docs/console.md): read-only — subject,
recipient, status, times in the office's zone, the text and HTML bodies as sent. Rows stuck
in `sending` (may or may not have been delivered) are filtered by "Stuck in sending"; the one
action, for them only, records an operator's verdict through `outbound_email_resolve_stuck`."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html
from unfold.admin import ModelAdmin

from billing.phi_guard import audited_refusals
from config.admin_mixins import ConsoleFormMixin, ReadOnlyAdminMixin
from config.errors import ApplicationError
from notifications.models import DispatchCursor, EmailStatus, OutboundEmail
from notifications.selectors import emails_for_console, local_time
from notifications.services import outbound_email_resolve_stuck


class ResolveStuckForm(ConsoleFormMixin, forms.Form):
    """What the mail server's log says about emails stuck in `sending`."""

    verdict = forms.ChoiceField(
        choices=[
            ("delivered", "Delivered: the server's log shows it accepted (mark as sent)"),
            ("not_delivered", "Not delivered: the server's log has no trace of it (send it again)"),
        ]
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required; kept in the audit trail (e.g. what the log shows). No patient information.",
    )


class StuckFilter(admin.SimpleListFilter):
    title = "needs an operator"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("sending", "Stuck in sending"), ("failed", "Failed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[OutboundEmail]) -> QuerySet[OutboundEmail]:
        if self.value() == "sending":
            return queryset.filter(status=EmailStatus.SENDING, stuck_reported_at__isnull=False)
        if self.value() == "failed":
            return queryset.filter(status=EmailStatus.FAILED)
        return queryset


@admin.register(OutboundEmail)
class OutboundEmailAdmin(ReadOnlyAdminMixin, ModelAdmin):
    """Read-only: what was (or will be) sent to each office's billing contact."""

    list_display = ("id", "kind", "office", "recipient", "subject", "status", "sent_local", "attempts")
    list_filter = (StuckFilter, "status", "kind")
    search_fields = ("subject", "idempotency_key", "office__name")
    show_full_result_count = False
    fields = (
        "kind",
        "office",
        "invoice",
        "recipient",
        "subject",
        "status",
        "attachment",
        "created_local",
        "sent_local",
        "failed_local",
        "attempts",
        "next_attempt_local",
        "last_error",
        "stuck_reported_local",
        "idempotency_key",
        "source_seq",
        "body_text_shown",
        "body_html_shown",
    )
    readonly_fields = fields
    actions = ["resolve_stuck"]

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("notifications.change_outboundemail"))

    @admin.action(description="Resolve emails stuck in sending…", permissions=("resolve",))
    def resolve_stuck(self, request: HttpRequest, queryset: QuerySet[OutboundEmail]) -> HttpResponse | None:
        """Record, after reading the mail server's log, whether stuck emails were delivered
        (→ sent) or not (→ sent again by the next dispatch); audited with the reason (spec §12)."""
        rows = list(queryset.select_related("office").order_by("pk"))
        form = ResolveStuckForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            done = 0
            for row in rows:
                try:
                    with audited_refusals(office_id=row.office_id, actor=request.user, context="email.resolve"):
                        outbound_email_resolve_stuck(
                            email_id=row.pk,
                            actor=request.user,
                            delivered=form.cleaned_data["verdict"] == "delivered",
                            reason=form.cleaned_data["reason"],
                        )
                except ApplicationError as exc:
                    self.message_user(request, exc.message, messages.WARNING)
                else:
                    done += 1
            if done:
                self.message_user(request, f"Resolved {done} email(s).", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Resolve {len(rows)} email(s) stuck in sending",
            "opts": self.model._meta,
            "rows": [
                {"pk": r.pk, "label": str(r), "subject": r.subject, "claimed": local_time(r, r.claimed_at)}
                for r in rows
            ],
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/notifications/resolve_stuck.html", context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboundEmail]:
        return emails_for_console()

    @admin.display(description="Sent (office time)", ordering="sent_at")
    def sent_local(self, obj: OutboundEmail) -> str:
        return local_time(obj, obj.sent_at)

    @admin.display(description="Created (office time)")
    def created_local(self, obj: OutboundEmail) -> str:
        return local_time(obj, obj.created_at)

    @admin.display(description="Failed (office time)")
    def failed_local(self, obj: OutboundEmail) -> str:
        return local_time(obj, obj.failed_at)

    @admin.display(description="Next attempt (office time)")
    def next_attempt_local(self, obj: OutboundEmail) -> str:
        return local_time(obj, obj.next_attempt_at)

    @admin.display(description="Reported stuck (office time)")
    def stuck_reported_local(self, obj: OutboundEmail) -> str:
        return local_time(obj, obj.stuck_reported_at)

    @admin.display(description="Text body")
    def body_text_shown(self, obj: OutboundEmail) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.body_text)

    @admin.display(description="HTML body (as sent, shown as source)")
    def body_html_shown(self, obj: OutboundEmail) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.body_html)


@admin.register(DispatchCursor)
class DispatchCursorAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("id", "last_seq", "updated_at")
    search_fields = ("last_seq",)
    list_filter = ("updated_at",)
