"""The audit trail in the operator console: read-only, never deleted (spec §9).

Rows are append-only in the database too (triggers); this admin offers no add, change or
delete, so the console cannot even try. `audit` imports no other app."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from unfold.admin import ModelAdmin

from audit.export import stream_csv
from audit.models import DISPLAY_FIELDS, AuditAnchor, AuditChainHead, AuditEvent
from audit.services import audit_record
from config.admin_mixins import ReadOnlyAdminMixin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("seq", "ts", "actor", "action", "target", "office_id", "outcome")
    list_display_links = ("seq", "ts")
    list_filter = ("action", "actor_type", "outcome")
    search_fields = ("action", "target_id")
    date_hierarchy = "ts"
    show_full_result_count = False  # the table grows for 6 years; skip the second COUNT(*)
    fields = DISPLAY_FIELDS
    readonly_fields = fields
    actions = ("export_csv",)

    @admin.action(description="Export selected entries as CSV (oldest first)", permissions=("view",))
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> StreamingHttpResponse:
        """The selected entries (or every entry of the filtered list, with "select all") as
        the API's CSV export writes them, formula-escaped; the export is audited (spec §9)."""
        entries = queryset.order_by("seq")
        rows = entries.count()
        audit_record(
            action="audit.exported", actor=request.user, data={"format": "csv", "rows": rows, "via": "console"}
        )
        response = StreamingHttpResponse(stream_csv(entries), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="audit-trail-{stamp}.csv"'
        response["Cache-Control"] = "no-store"
        return response

    @admin.display(description="Actor", ordering="actor_type")
    def actor(self, obj: AuditEvent) -> str:
        if obj.actor_label or obj.actor_id:
            return f"{obj.actor_type}:{obj.actor_label or obj.actor_id}"
        return obj.actor_type

    @admin.display(description="Target", ordering="target_type")
    def target(self, obj: AuditEvent) -> str:
        return f"{obj.target_type}:{obj.target_id}" if obj.target_type else "—"


@admin.register(AuditChainHead)
class AuditChainHeadAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("id", "seq", "entry_hash", "updated_at")
    search_fields = ("entry_hash",)
    list_filter = ("updated_at",)


@admin.register(AuditAnchor)
class AuditAnchorAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("seq", "entry_hash", "anchored_at")
    search_fields = ("entry_hash", "seq")
    list_filter = ("anchored_at",)
    date_hierarchy = "anchored_at"
