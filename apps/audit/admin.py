from django.contrib import admin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Auditors read the trail; nobody adds, edits or deletes it."""

    list_display = ("occurred_at", "username", "action", "study_instance_uid", "source_address")
    list_filter = ("action",)
    search_fields = ("username", "study_instance_uid")
    date_hierarchy = "occurred_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
