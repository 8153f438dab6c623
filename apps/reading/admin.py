from django.contrib import admin

from .models import Assignment, Radiologist, Shift


class ShiftInline(admin.TabularInline):
    model = Shift
    extra = 1


@admin.register(Radiologist)
class RadiologistAdmin(admin.ModelAdmin):
    list_display = ("display_name", "user", "specialty", "status")
    list_filter = ("specialty", "status")
    search_fields = ("display_name", "user__username", "user__email")
    inlines = [ShiftInline]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "study", "radiologist", "status", "assigned_at", "acknowledged_at")
    list_filter = ("status", "radiologist")
    search_fields = ("study__accession_number", "study__study_instance_uid")
    readonly_fields = ("study", "assigned_at", "explanation")
