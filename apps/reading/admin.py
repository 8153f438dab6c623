"""Reading configuration in the admin. Radiologists and assignments, whose actions start pipeline
steps, are registered in apps/pipeline/admin.py."""

from django.contrib import admin

from .models import EscalationStep, SlaEvent, SlaPolicy


@admin.register(SlaPolicy)
class SlaPolicyAdmin(admin.ModelAdmin):
    list_display = ("priority", "institution", "acknowledge_minutes", "report_minutes", "at_risk_fraction")
    list_filter = ("priority",)


@admin.register(SlaEvent)
class SlaEventAdmin(admin.ModelAdmin):
    list_display = ("assignment", "kind", "due_at", "occurred_at")
    list_filter = ("kind",)
    readonly_fields = ("assignment", "kind", "due_at", "occurred_at")


@admin.register(EscalationStep)
class EscalationStepAdmin(admin.ModelAdmin):
    list_display = ("study", "level", "assignment", "due_at", "done_at", "detail")
    list_filter = ("level",)
    readonly_fields = ("study", "assignment", "level", "due_at", "done_at", "detail")
