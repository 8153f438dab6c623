"""Reading in the admin: radiologists with shifts and privileges, assignments, SLA policies and events.
Actions that let a study go on say so by a signal (apps.core.signals); the pipeline starts the work."""

from django.contrib import admin

from apps.configuration.versioned import VersionedAdmin
from apps.core.signals import assignment_made, study_step_due

from .models import Assignment, EscalationPolicy, EscalationStep, Privilege, Radiologist, Shift, SlaEvent, SlaPolicy
from .services import assignment_reassign, radiologist_status_set


@admin.register(SlaPolicy)
class SlaPolicyAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("priority", "institution", "acknowledge_minutes", "report_minutes", "at_risk_fraction")
    list_filter = ("priority",)


@admin.register(EscalationPolicy)
class EscalationPolicyAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("priority", "window_minutes", "steps", "enabled")


@admin.register(SlaEvent)
class SlaEventAdmin(admin.ModelAdmin):
    list_display = ("assignment", "kind", "due_at", "occurred_at")
    list_filter = ("kind",)
    readonly_fields = ("assignment", "kind", "due_at", "occurred_at")


@admin.register(EscalationStep)
class EscalationStepAdmin(admin.ModelAdmin):
    list_display = ("study", "level", "action", "assignment", "due_at", "done_at", "detail")
    list_filter = ("action",)
    readonly_fields = ("study", "assignment", "level", "action", "due_at", "done_at", "detail")


class ShiftInline(admin.TabularInline):
    model = Shift
    extra = 0


class PrivilegeInline(admin.TabularInline):
    model = Privilege
    extra = 0
    readonly_fields = ("expiry_warned_on",)


@admin.register(Radiologist)
class RadiologistAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("display_name", "user", "specialty", "subspecialty", "status", "capacity", "seniority")
    list_filter = ("specialty", "status")
    search_fields = ("display_name", "user__username", "user__email")
    inlines = [ShiftInline, PrivilegeInline]
    actions = ["set_online", "set_offline"]

    @admin.action(description="Set online (their unassigned studies are tried again)")
    def set_online(self, request, queryset) -> None:
        studies = {s for r in queryset for s in radiologist_status_set(radiologist_id=r.pk, online=True)}
        for study_id in studies:
            study_step_due.send(sender=self.__class__, study_id=study_id, step="assign")
        self.message_user(request, f"{queryset.count()} online; {len(studies)} unassigned studies tried again.")

    @admin.action(description="Set offline (their unacknowledged studies are rebalanced)")
    def set_offline(self, request, queryset) -> None:
        studies = [s for r in queryset for s in radiologist_status_set(radiologist_id=r.pk, online=False)]
        for study_id in studies:
            study_step_due.send(sender=self.__class__, study_id=study_id, step="assign")
        self.message_user(request, f"{queryset.count()} offline; {len(studies)} studies rebalanced.")


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "study",
        "radiologist",
        "status",
        "assigned_at",
        "acknowledge_due_at",
        "report_due_at",
        "acknowledged_at",
        "updated_at",
    )
    list_filter = ("status", "radiologist")
    search_fields = ("study__accession_number", "study__study_instance_uid")
    readonly_fields = ("study", "assigned_at", "explanation")
    actions = ["reassign"]

    @admin.action(description="Reassign to the best other eligible reader")
    def reassign(self, request, queryset) -> None:
        moved = 0
        for assignment in queryset:
            replacement = assignment_reassign(assignment_id=assignment.pk)
            if replacement is not None:
                moved += 1
                assignment_made.send(sender=self.__class__, assignment_id=replacement.pk)
        self.message_user(request, f"{moved} of {queryset.count()} reassigned.")
