"""Admin for routing decisions lives with the pipeline: routing a study again starts a chain step."""

from django.contrib import admin, messages
from django.template.response import TemplateResponse

from apps.reading.models import Assignment, Privilege, Radiologist, Shift
from apps.reading.services import assignment_reassign, radiologist_status_set
from apps.routing.models import RoutingDecision
from apps.routing.retention import FilesPurged
from apps.routing.services import dry_run_study, study_reroute
from apps.studies.models import HeldStudy, Stage
from apps.studies.services import study_reject, study_release

from .chains import chain_start, task_start
from .services import assignment_notify


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(admin.ModelAdmin):
    list_display = ("study", "destinations", "matched_rules", "unrouted", "decided_at")
    list_filter = ("unrouted",)
    search_fields = ("study__study_instance_uid", "study__accession_number")
    readonly_fields = ("study", "matched_rules", "destinations", "explanation", "unrouted", "decided_at")
    actions = ["route_again", "dry_run"]

    @admin.action(description="Route unrouted studies again with today's rules")
    def route_again(self, request, queryset) -> None:
        rerouted = []
        for study_id in [d.study_id for d in queryset if d.unrouted]:
            try:
                if study_reroute(study_id=study_id):
                    rerouted.append(study_id)
            except FilesPurged as exc:
                self.message_user(request, f"Study {study_id}: {exc}", messages.ERROR)
        for study_id in rerouted:
            chain_start(study_id, "route")
        self.message_user(request, f"{len(rerouted)} studies sent to routing again.")

    @admin.action(description="Dry run today's rules on these studies")
    def dry_run(self, request, queryset):
        decisions = [
            {"label": f"Study {d.study_id}", "decision": dry_run_study(study_id=d.study_id), "stored": d.destinations}
            for d in queryset.select_related("study")
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Dry run of the routing rules",
            "decisions": decisions,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/routing/decision.html", context)


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
            chain_start(study_id, "route")
        self.message_user(request, f"{len(released)} studies released.")

    @admin.action(description="Reject: keep these studies, never route them")
    def reject(self, request, queryset) -> None:
        rejected = sum(study_reject(study_id=s.pk, user=request.user.get_username()) for s in queryset)
        self.message_user(request, f"{rejected} studies rejected.")


class ShiftInline(admin.TabularInline):
    model = Shift
    extra = 0


class PrivilegeInline(admin.TabularInline):
    model = Privilege
    extra = 0
    readonly_fields = ("expiry_warned_on",)


@admin.register(Radiologist)
class RadiologistAdmin(admin.ModelAdmin):
    list_display = ("display_name", "user", "specialty", "subspecialty", "status", "capacity", "seniority")
    list_filter = ("specialty", "status")
    search_fields = ("display_name", "user__username", "user__email")
    inlines = [ShiftInline, PrivilegeInline]
    actions = ["set_online", "set_offline"]

    @admin.action(description="Set online (their unassigned studies are tried again)")
    def set_online(self, request, queryset) -> None:
        studies = {s for r in queryset for s in radiologist_status_set(radiologist_id=r.pk, online=True)}
        for study_id in studies:
            chain_start(study_id, "assign")
        self.message_user(request, f"{queryset.count()} online; {len(studies)} unassigned studies tried again.")

    @admin.action(description="Set offline (their unacknowledged studies are rebalanced)")
    def set_offline(self, request, queryset) -> None:
        studies = [s for r in queryset for s in radiologist_status_set(radiologist_id=r.pk, online=False)]
        for study_id in studies:
            chain_start(study_id, "assign")
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
                for notification_id in assignment_notify(assignment=replacement):
                    task_start("notification_send", notification_id)
        self.message_user(request, f"{moved} of {queryset.count()} reassigned.")
