from django.contrib import admin

from .models import Instance, QualityAssessment, ReceivedInstance, Series, SpecialtyMapping, Study


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
        "stage",
        "num_instances",
        "institution_name",
        "received_at",
    )
    list_filter = ("stage", "priority", "specialty", "modality")
    search_fields = ("study_instance_uid", "accession_number", "patient_id")
    readonly_fields = [f.name for f in Study._meta.fields]
    inlines = [SeriesInline]
    date_hierarchy = "received_at"


@admin.register(ReceivedInstance)
class ReceivedInstanceAdmin(admin.ModelAdmin):
    list_display = ("id", "sop_instance_uid", "state", "calling_ae_title", "peer_address", "size", "received_at")
    list_filter = ("state", "calling_ae_title")
    search_fields = ("sop_instance_uid", "study_instance_uid")
    readonly_fields = [f.name for f in ReceivedInstance._meta.fields]


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ("id", "sop_instance_uid", "study", "series", "transfer_syntax_uid", "size")
    search_fields = ("sop_instance_uid",)
    readonly_fields = [f.name for f in Instance._meta.fields]


@admin.register(QualityAssessment)
class QualityAssessmentAdmin(admin.ModelAdmin):
    list_display = ("study", "verdict", "assessed_at")
    list_filter = ("verdict",)
    readonly_fields = ("study", "verdict", "checks", "assessed_at")


@admin.register(SpecialtyMapping)
class SpecialtyMappingAdmin(admin.ModelAdmin):
    list_display = ("order", "modality", "body_parts", "specialty", "enabled")
    list_editable = ("enabled",)
    list_filter = ("specialty", "enabled")
