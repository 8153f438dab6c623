"""Admin for routing decisions lives with the pipeline: routing a study again starts a chain step."""

from django.contrib import admin
from django.template.response import TemplateResponse

from apps.routing.models import RoutingDecision
from apps.routing.services import dry_run_study, study_reroute

from .chains import chain_start


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(admin.ModelAdmin):
    list_display = ("study", "destinations", "matched_rules", "unrouted", "decided_at")
    list_filter = ("unrouted",)
    search_fields = ("study__study_instance_uid", "study__accession_number")
    readonly_fields = ("study", "matched_rules", "destinations", "explanation", "unrouted", "decided_at")
    actions = ["route_again", "dry_run"]

    @admin.action(description="Route unrouted studies again with today's rules")
    def route_again(self, request, queryset) -> None:
        study_ids = [d.study_id for d in queryset if d.unrouted]
        rerouted = [s for s in study_ids if study_reroute(study_id=s)]
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
