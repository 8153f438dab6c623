from django.contrib import admin

from .models import Retrieval, RetrievalItem


class RetrievalItemInline(admin.TabularInline):
    model = RetrievalItem
    fields = ("sop_instance_uid", "outcome", "status", "error", "sent_sha256")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Retrieval)
class RetrievalAdmin(admin.ModelAdmin):
    """The ledger of C-MOVE and C-GET: read-only, as the answers were."""

    list_display = (
        "started_at",
        "kind",
        "calling_ae_title",
        "move_destination",
        "level",
        "requested",
        "completed",
        "warning",
        "failed",
        "status_hex",
    )
    list_filter = ("kind", "level", "cancelled")
    search_fields = ("calling_ae_title", "move_destination", "items__sop_instance_uid")
    inlines = [RetrievalItemInline]

    @admin.display(description="status")
    def status_hex(self, obj: Retrieval) -> str:
        return "" if obj.status is None else f"0x{obj.status:04X}"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
