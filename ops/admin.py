from django.contrib import admin
from unfold.admin import ModelAdmin

from config.admin_mixins import ReadOnlyAdminMixin
from ops.models import Heartbeat


@admin.register(Heartbeat)
class HeartbeatAdmin(ReadOnlyAdminMixin, ModelAdmin):
    """Read-only: when each watched periodic task last succeeded (written by the worker)."""

    list_display = ("name", "last_success_at", "successes", "last_task_id")
    search_fields = ("name",)
    list_filter = ("name",)
