"""The console's page of emails (spec §12, emails; docs/console.md): read-only — subject,
recipient, status, times in the office's zone, the text and HTML bodies as sent. Rows stuck
in `sending` (may or may not have been delivered) are filtered by "Stuck in sending"."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from unfold.admin import ModelAdmin

from config.admin_mixins import ReadOnlyAdminMixin
from notifications.models import DispatchCursor, EmailStatus, OutboundEmail
from notifications.selectors import emails_for_console, local_time


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
