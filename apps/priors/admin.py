from django.contrib import admin

from apps.configuration.versioned import VersionedAdmin

from .models import PriorFetch, PriorRule, PriorStudy
from .services import prior_fetch_retry


@admin.register(PriorRule)
class PriorRuleAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("name", "enabled", "archive", "match", "max_age_years", "max_count", "modalities")
    list_filter = ("enabled", "match", "archive")
    search_fields = ("name", "description")


class PriorStudyInline(admin.TabularInline):
    model = PriorStudy
    extra = 0
    can_delete = False
    fields = ("study_instance_uid", "study_date", "modalities", "reason", "state", "completed", "failed", "error")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(PriorFetch)
class PriorFetchAdmin(admin.ModelAdmin):
    list_display = ("id", "study", "rule", "destination", "state", "attempts", "next_attempt_at", "detail", "error")
    list_filter = ("state", "rule", "destination")
    search_fields = ("study__study_instance_uid", "study__accession_number")
    list_select_related = ("study", "rule", "destination")
    readonly_fields = (
        "study",
        "rule",
        "destination",
        "state",
        "attempts",
        "next_attempt_at",
        "claimed_at",
        "queried_at",
        "finished_at",
        "detail",
        "error",
        "candidates",
        "created_at",
    )
    inlines = [PriorStudyInline]
    actions = ["retry"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Retry failed prior fetches (what is not at the destination yet)")
    def retry(self, request, queryset) -> None:
        retried = [pk for pk in queryset.values_list("id", flat=True) if prior_fetch_retry(fetch_id=pk)]
        self.message_user(request, f"{len(retried)} fetch(es) due again; Beat starts them within its sweep period.")
