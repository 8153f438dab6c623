from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.urls import path
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from apps.audit.services import audit_action
from apps.configuration.versioned import VersionedAdmin
from apps.core import clock
from apps.core.signals import study_step_due
from apps.studies import admin as studies_admin
from apps.studies.models import Study

from .commitment import SENT as COMMITTABLE
from .models import (
    CommitmentRequest,
    Delivery,
    DeliveryItem,
    DeliveryWindow,
    Destination,
    RoutingDecision,
    RoutingRule,
    RuleCriterion,
    RuleTransform,
    RuleWindow,
    StreamDecision,
)
from .retention import FilesPurged, StudyBusy, study_delete
from .services import (
    delivery_give_up,
    delivery_retry,
    destination_echo,
    destination_health_set,
    destination_resume,
    destinations_through,
    dry_run,
    dry_run_study,
    facts_from_dataset,
    rules_engine,
    rules_replay,
    study_reroute,
)

REPLAY_DAYS = 7


class DeliveryWindowInline(admin.TabularInline):
    model = DeliveryWindow
    extra = 0


@admin.register(Destination)
class DestinationAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = (
        "name",
        "protocol",
        "ae_title",
        "host",
        "port",
        "enabled",
        "tls_enabled",
        "health",
        "config_error",
        "max_associations",
    )
    list_filter = ("enabled", "protocol", "health", "tls_enabled")
    search_fields = ("name", "ae_title", "host")
    readonly_fields = (
        "health",
        "health_checked_at",
        "down_since",
        "health_detail",
        "busy_limit",
        "busy_at",
        "config_error",
        "config_error_at",
        "tls_peer_not_after",
        "tls_peer_fingerprint",
    )
    fieldsets = [
        (
            None,
            {"fields": ["name", "ae_title", "host", "port", "enabled", "alternate", "alternate_after", "transform"]},
        ),
        ("Worklist (docs/worklist.md)", {"fields": ["viewer_url_template"]}),
        (
            "Delivery",
            {
                "fields": [
                    "max_associations",
                    "max_attempts",
                    "retry_base_delay",
                    "retry_max_delay",
                    "connect_timeout",
                    "dimse_timeout",
                    "network_timeout",
                    "retention_hours",
                ]
            },
        ),
        (
            "Storage commitment (docs/storage-commitment.md)",
            {
                "fields": ["storage_commitment", "commitment_timeout"],
                "description": "The destination must know this router (its AE title, host and SCP port) to send "
                "its report; files it has not committed to are not purged.",
            },
        ),
        (
            "DICOMweb (protocol DICOMweb: STOW-RS instead of C-STORE; docs/configuration.md)",
            {
                "fields": [
                    "protocol",
                    "dicomweb_url",
                    "dicomweb_auth",
                    "dicomweb_credentials",
                    "request_timeout",
                    "batch_count",
                    "batch_bytes",
                    "dicomweb_verify",
                ]
            },
        ),
        (
            "TLS (files by path on the workers' hosts; docs/security.md)",
            {
                "fields": [
                    "tls_enabled",
                    "tls_ca_file",
                    "tls_cert_file",
                    "tls_key_file",
                    "tls_verify",
                    "tls_check_hostname",
                    "tls_peer_not_after",
                    "tls_peer_fingerprint",
                ]
            },
        ),
        (
            "State",
            {
                "fields": [
                    "config_error",
                    "config_error_at",
                    "health",
                    "health_checked_at",
                    "down_since",
                    "health_detail",
                    "busy_limit",
                    "busy_at",
                ]
            },
        ),
    ]
    inlines = [DeliveryWindowInline]
    actions = ["test_connection", "resume"]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change and obj.config_error:  # the configuration was changed: try again
            destination_resume(destination_id=obj.pk)

    @admin.action(description="Resume after a configuration fix (paused destinations)")
    def resume(self, request, queryset) -> None:
        resumed = [d.name for d in queryset if destination_resume(destination_id=d.pk)]
        for name in resumed:
            audit_action(
                request=request, action="destination_resume", study_instance_uid="", detail=f"destination {name}"
            )
        self.message_user(request, f"Resumed: {', '.join(resumed) or 'none was paused'}.")

    @admin.action(description="Test connection (C-ECHO)")
    def test_connection(self, request, queryset) -> None:
        for destination in queryset:
            result = destination_echo(destination_id=destination.pk)
            up = result.kind == "delivered"
            destination_health_set(destination_id=destination.pk, up=up, detail=result.error, now=clock.now())
            level = messages.SUCCESS if up else messages.ERROR
            self.message_user(request, f"{destination.name}: {'reachable' if up else result.error}", level)


class RuleCriterionInline(admin.TabularInline):
    model = RuleCriterion
    extra = 1


class RuleWindowInline(admin.TabularInline):
    model = RuleWindow
    extra = 0


class RuleTransformInline(admin.TabularInline):
    """When this rule sends to a destination, the profile it goes through (instead of the destination's)."""

    model = RuleTransform
    extra = 0


class DryRunForm(forms.Form):
    study_instance_uid = forms.CharField(required=False, max_length=64, label="Study Instance UID")
    dicom_file = forms.FileField(required=False, label="or a DICOM file")

    def clean(self):
        data = super().clean()
        if not data.get("study_instance_uid") and not data.get("dicom_file"):
            raise forms.ValidationError("Give a stored study's UID or upload a DICOM file.")
        return data


@admin.register(RoutingRule)
class RoutingRuleAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = (
        "name",
        "priority",
        "enabled",
        "forward_mode",
        "assign_after_delivery",
        "exclusive",
        "fallback",
        "updated_at",
    )
    list_filter = ("enabled", "forward_mode", "assign_after_delivery", "exclusive", "fallback")
    search_fields = ("name",)
    filter_horizontal = ("destinations",)
    inlines = [RuleCriterionInline, RuleWindowInline, RuleTransformInline]
    actions = ["replay"]
    change_list_template = "admin/routing/routingrule_change_list.html"

    def get_urls(self):
        extra = [path("dry-run/", self.admin_site.admin_view(self.dry_run_view), name="routing_dry_run")]
        return extra + super().get_urls()

    def dry_run_view(self, request):
        """Dry run of the current rules on a stored study or an uploaded file: nothing is written."""
        form = DryRunForm(request.POST or None, request.FILES or None)
        decisions = []
        if request.method == "POST" and form.is_valid():
            if uid := form.cleaned_data["study_instance_uid"]:
                study = Study.objects.filter(study_instance_uid=uid.strip()).first()
                if study is None:
                    form.add_error("study_instance_uid", "No such study.")
                else:
                    decisions.append(
                        {
                            "label": f"Study {study.pk}",
                            "decision": dry_run_study(study_id=study.pk),
                            "stored": getattr(getattr(study, "routing_decision", None), "destinations", None),
                        }
                    )
            if upload := form.cleaned_data["dicom_file"]:
                try:
                    ds = dcmread(upload, stop_before_pixels=True)
                except (InvalidDicomError, OSError, ValueError) as exc:
                    form.add_error("dicom_file", f"Not a readable DICOM file: {exc}")
                else:
                    _, keywords = rules_engine()
                    decisions.append(
                        {
                            "label": upload.name,
                            "decision": dry_run(facts=facts_from_dataset(ds, keywords)),
                            "stored": None,
                        }
                    )
        for item in decisions:
            item["through"] = destinations_through(item["decision"].destinations, item["decision"].matched)
        context = {
            **self.admin_site.each_context(request),
            "title": "Dry run of the routing rules",
            "form": form,
            "decisions": decisions,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/routing/decision.html", context)

    @admin.action(description=f"Replay these rules (even if disabled) over the last {REPLAY_DAYS} days")
    def replay(self, request, queryset):
        changed = rules_replay(draft_rule_ids=list(queryset.values_list("pk", flat=True)), days=REPLAY_DAYS)
        context = {
            **self.admin_site.each_context(request),
            "title": "Replay of draft rules",
            "replay": changed,
            "days": REPLAY_DAYS,
            "decisions": [],
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/routing/decision.html", context)


class DeliveryItemInline(admin.TabularInline):
    model = DeliveryItem
    extra = 0
    can_delete = False
    fields = ("instance", "state", "status", "attempts", "error", "sent_sha256", "updated_at", "committed_at")
    readonly_fields = fields


class CommitmentRequestInline(admin.TabularInline):
    model = CommitmentRequest
    extra = 0
    can_delete = False
    fields = (
        "transaction_uid",
        "state",
        "attempts",
        "last_status",
        "sent_at",
        "next_attempt_at",
        "answered_at",
        "committed",
        "failed",
        "error",
    )
    readonly_fields = fields


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "study",
        "destination",
        "target",
        "transform",
        "state",
        "committed",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "last_error",
    )
    list_filter = ("state", "destination")
    readonly_fields = [f.name for f in Delivery._meta.fields]
    inlines = [DeliveryItemInline, CommitmentRequestInline]
    actions = ["retry", "give_up"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                sent_count=Count("items", filter=Q(items__state__in=COMMITTABLE)),
                committed_count=Count("items", filter=Q(items__committed_at__isnull=False)),
            )
        )

    @admin.display(description="committed")
    def committed(self, delivery: Delivery) -> str:
        """Beside `delivered`: how many of the instances sent the destination committed to storing, where it
        is asked (storage commitment); a dash where it is not."""
        if not delivery.destination.storage_commitment:
            return "-"
        return f"{delivery.committed_count}/{delivery.sent_count}"

    @admin.action(description="Retry failed or held deliveries (sends only what is missing)")
    def retry(self, request, queryset) -> None:
        count = 0
        for delivery in queryset:
            try:
                count += delivery_retry(delivery_id=delivery.pk)
            except FilesPurged as exc:
                self.message_user(request, f"Delivery {delivery.pk}: {exc}", messages.ERROR)
        self.message_user(request, f"{count} deliveries queued again.")

    @admin.action(description="Give up failed or held deliveries (stop retrying; their files may then be purged)")
    def give_up(self, request, queryset) -> None:
        given_up = [d for d in queryset.select_related("study", "destination") if delivery_give_up(delivery_id=d.pk)]
        for delivery in given_up:
            audit_action(
                request=request,
                action="admin.deliveries.give_up",
                study=delivery.study,
                study_instance_uid=delivery.study.study_instance_uid,
                detail=f"gave up delivery {delivery.pk} to {delivery.destination.name}",
            )
        self.message_user(request, f"{len(given_up)} deliveries given up.")


admin.site.unregister(Study)


class DeleteStudyForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why these studies are deleted (written to the audit log; no patient data).",
    )


@admin.register(Study)
class StudyAdmin(studies_admin.StudyAdmin):
    """The study admin, with what needs the delivery ledger: deleting a study sent in error (files and rows,
    audited, refused while a delivery is on the wire). Django's own bulk delete is off: it would leave files."""

    actions = [*studies_admin.StudyAdmin.actions, "delete_study"]

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Delete: files and rows, for studies sent in error (asks for a reason)")
    def delete_study(self, request, queryset):
        if not request.user.is_staff:
            raise PermissionDenied
        form = DeleteStudyForm(request.POST if "confirm" in request.POST else None)
        if form.is_valid():
            for study in queryset:
                self._delete_one(request, study, form.cleaned_data["reason"])
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Delete studies sent in error",
            "studies": queryset,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/routing/study_delete.html", context)

    def _delete_one(self, request, study: Study, reason: str) -> None:
        try:
            removed = study_delete(study_id=study.pk, reason=reason)
        except StudyBusy as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        detail = f"deleted, {removed} bytes of files removed; reason: {reason}"
        audit_action(
            request=request, action="admin.studies.delete", study_instance_uid=study.study_instance_uid, detail=detail
        )
        self.message_user(request, f"Study {study.pk} deleted ({removed // 2**20} MiB of files).")


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
            study_step_due.send(sender=self.__class__, study_id=study_id, step="route")
        self.message_user(request, f"{len(rerouted)} studies sent to routing again.")

    @admin.action(description="Dry run today's rules on these studies")
    def dry_run(self, request, queryset):
        decisions = [
            {"label": f"Study {d.study_id}", "decision": dry_run_study(study_id=d.study_id), "stored": d.destinations}
            for d in queryset.select_related("study")
        ]
        for item in decisions:
            item["through"] = destinations_through(item["decision"].destinations, item["decision"].matched)
        context = {
            **self.admin_site.each_context(request),
            "title": "Dry run of the routing rules",
            "decisions": decisions,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/routing/decision.html", context)


@admin.register(StreamDecision)
class StreamDecisionAdmin(admin.ModelAdmin):
    """Where on-receipt rules streamed studies, and where the decision after QC disagreed (a discrepancy)."""

    list_display = ("study", "destinations", "matched_rules", "decided_at", "discrepancy", "checked_at")
    list_filter = ("decided_at", "checked_at")
    search_fields = ("study__study_instance_uid", "study__accession_number")
    readonly_fields = (
        "study",
        "destinations",
        "matched_rules",
        "explanation",
        "decided_at",
        "discrepancy",
        "checked_at",
    )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
