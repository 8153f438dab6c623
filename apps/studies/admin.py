from django.contrib import admin
from django.urls import reverse

from apps.audit.services import audit_views
from apps.configuration.versioned import VersionedAdmin
from apps.core.signals import study_step_due

from .models import (
    HeldStudy,
    Instance,
    PriorityKeyword,
    PurgeRun,
    QcCheck,
    QualityAssessment,
    ReceivedInstance,
    RetentionPolicy,
    Series,
    SpecialtyMapping,
    Stage,
    StorageEmergency,
    Study,
    WorkloadWeight,
)
from .services import study_reclassify, study_reject, study_release


class SeriesInline(admin.TabularInline):
    model = Series
    extra = 0
    can_delete = False
    fields = ("series_number", "modality", "body_part", "series_description", "num_instances", "series_instance_uid")
    readonly_fields = fields


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "accession_number",
        "modalities",
        "body_part",
        "specialty",
        "priority",
        "workload",
        "stage",
        "num_instances",
        "institution_name",
        "received_at",
        "protected",
    )
    list_filter = ("stage", "priority", "specialty", "modality", "protected")
    search_fields = ("study_instance_uid", "accession_number", "patient_id")
    readonly_fields = [f.name for f in Study._meta.fields]
    inlines = [SeriesInline]
    date_hierarchy = "received_at"
    actions = ["classify_again", "protect", "unprotect"]

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        shown = getattr(getattr(response, "context_data", {}).get("cl"), "result_list", [])
        audit_views(request=request, action="admin.studies.list", studies=shown)
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        study = self.get_object(request, object_id)
        if study is not None:
            audit_views(request=request, action="admin.studies.detail", studies=[study])
        timeline = reverse("study-timeline", args=[object_id])
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "timeline_url": timeline})

    @admin.action(description="Classify again with the current tables")
    def classify_again(self, request, queryset) -> None:
        for study in queryset:
            study_reclassify(study_id=study.pk)
        self.message_user(request, f"{queryset.count()} studies classified again.")

    @admin.action(description="Protect: never purge these studies' files")
    def protect(self, request, queryset) -> None:
        self.message_user(request, f"{queryset.update(protected=True)} studies protected.")

    @admin.action(description="Unprotect: purge these studies' files once their retention passed")
    def unprotect(self, request, queryset) -> None:
        self.message_user(request, f"{queryset.update(protected=False)} studies no longer protected.")


@admin.register(ReceivedInstance)
class ReceivedInstanceAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "sop_instance_uid",
        "state",
        "calling_ae_title",
        "peer_address",
        "size",
        "conflicting_copies",
        "received_at",
    )
    list_filter = ("state", "calling_ae_title")
    search_fields = ("sop_instance_uid", "study_instance_uid")
    readonly_fields = [f.name for f in ReceivedInstance._meta.fields]


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ("id", "sop_instance_uid", "study", "series", "size", "file_state", "purged_at")
    list_filter = ("file_state", "purge_reason")
    search_fields = ("sop_instance_uid",)
    readonly_fields = [f.name for f in Instance._meta.fields]


@admin.register(QualityAssessment)
class QualityAssessmentAdmin(admin.ModelAdmin):
    list_display = ("study", "verdict", "assessed_at", "decided_by", "decided_at")
    list_filter = ("verdict",)
    readonly_fields = ("study", "verdict", "checks", "assessed_at", "decided_by", "decided_at")


@admin.register(QcCheck)
class QcCheckAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("name", "modality", "min_value", "max_value", "policy", "enabled")
    list_editable = ("min_value", "max_value", "policy", "enabled")
    list_filter = ("policy", "modality", "enabled")


@admin.register(SpecialtyMapping)
class SpecialtyMappingAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("order", "modality", "body_parts", "description_pattern", "specialty", "subspecialty", "enabled")
    list_editable = ("enabled",)
    list_filter = ("specialty", "enabled")


@admin.register(PriorityKeyword)
class PriorityKeywordAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("keyword", "priority")


@admin.register(WorkloadWeight)
class WorkloadWeightAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("modality", "body_part", "weight")
    list_editable = ("weight",)


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(VersionedAdmin, admin.ModelAdmin):
    """One row: how long files are kept (docs/storage.md)."""

    list_display = ("__str__", "delivered_hours", "unrouted_hours", "failed_hours", "rejected_hours")

    def has_add_permission(self, request) -> bool:
        return not RetentionPolicy.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(PurgeRun)
class PurgeRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "emergency", "files", "bytes_freed", "purgeable_bytes", "free_bytes", "finished_at")
    list_filter = ("emergency",)
    readonly_fields = [f.name for f in PurgeRun._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(StorageEmergency)
class StorageEmergencyAdmin(admin.ModelAdmin):
    list_display = ("started_at", "ended_at", "free_bytes")
    readonly_fields = ("started_at", "ended_at", "free_bytes")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(HeldStudy)
class HeldStudyAdmin(admin.ModelAdmin):
    """Studies QC held: release resumes the chain at routing; reject keeps them unrouted for good."""

    list_display = ("id", "accession_number", "modalities", "body_part", "priority", "stage_detail", "stage_changed_at")
    search_fields = ("study_instance_uid", "accession_number")
    actions = ["release", "reject"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(stage=Stage.HELD)

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Release: route and assign these studies")
    def release(self, request, queryset) -> None:
        released = [s.pk for s in queryset if study_release(study_id=s.pk, user=request.user.get_username())]
        for study_id in released:
            study_step_due.send(sender=self.__class__, study_id=study_id, step="route")
        self.message_user(request, f"{len(released)} studies released.")

    @admin.action(description="Reject: keep these studies, never route them")
    def reject(self, request, queryset) -> None:
        rejected = sum(study_reject(study_id=s.pk, user=request.user.get_username()) for s in queryset)
        self.message_user(request, f"{rejected} studies rejected.")
