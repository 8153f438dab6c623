from rest_framework import serializers

from apps.audit.models import AuditEvent
from apps.reading.models import Assignment, Radiologist
from apps.routing.models import Delivery
from apps.studies.models import Study


class StudySummarySerializer(serializers.ModelSerializer):
    qc_verdict = serializers.CharField(source="quality.verdict", default=None, read_only=True)

    class Meta:
        model = Study
        fields = [
            "id",
            "study_instance_uid",
            "accession_number",
            "modality",
            "modalities",
            "body_part",
            "study_description",
            "institution_name",
            "priority",
            "specialty",
            "stage",
            "received_at",
            "num_series",
            "num_instances",
            "qc_verdict",
        ]


class AssignmentSerializer(serializers.ModelSerializer):
    study = StudySummarySerializer(read_only=True)
    radiologist = serializers.CharField(source="radiologist.display_name", read_only=True)
    radiologist_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Assignment
        fields = [
            "id",
            "study",
            "radiologist",
            "radiologist_id",
            "status",
            "assigned_at",
            "acknowledged_at",
            "started_at",
            "completed_at",
            "acknowledge_due_at",
            "report_due_at",
            "updated_at",
        ]


class DeliverySerializer(serializers.ModelSerializer):
    destination = serializers.CharField(source="destination.name", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    instances = serializers.IntegerField(read_only=True)
    delivered = serializers.IntegerField(read_only=True)
    # Storage commitment: whether the destination is asked, and how many instances it committed to.
    storage_commitment = serializers.BooleanField(source="destination.storage_commitment", read_only=True)
    committed = serializers.IntegerField(read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "study_instance_uid",
            "destination",
            "state",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "last_error",
            "instances",
            "delivered",
            "storage_commitment",
            "committed",
        ]


class StudyDetailSerializer(StudySummarySerializer):
    routing = serializers.SerializerMethodField()
    deliveries = serializers.SerializerMethodField()
    assignment = serializers.SerializerMethodField()

    class Meta(StudySummarySerializer.Meta):
        fields = [*StudySummarySerializer.Meta.fields, "routing", "deliveries", "assignment"]

    def get_routing(self, study: Study) -> dict | None:
        decision = getattr(study, "routing_decision", None)
        if decision is None:
            return None
        return {
            "matched_rules": decision.matched_rules,
            "destinations": decision.destinations,
            "unrouted": decision.unrouted,
            "decided_at": decision.decided_at,
        }

    def get_deliveries(self, study: Study) -> list[dict]:
        return [
            {"destination": d.destination.name, "state": d.state, "attempts": d.attempts}
            for d in study.deliveries.select_related("destination")
        ]

    def get_assignment(self, study: Study) -> dict | None:
        assignment = study.assignments.exclude(status=Assignment.Status.CANCELLED).order_by("-assigned_at").first()
        return AssignmentSerializer(assignment).data if assignment else None


class RadiologistStatusSerializer(serializers.ModelSerializer):
    class Meta:
        model = Radiologist
        fields = ["id", "display_name", "specialty", "status"]
        read_only_fields = ["id", "display_name", "specialty"]


class AssignmentFilterSerializer(serializers.Serializer):
    """The assignment list's query parameters, validated (a bad value answers 400, never 500)."""

    study_instance_uid = serializers.CharField(required=False, max_length=64)
    accession_number = serializers.CharField(required=False, max_length=16)
    status = serializers.ChoiceField(choices=Assignment.Status.choices, required=False)
    radiologist = serializers.IntegerField(required=False, min_value=1)
    priority = serializers.ChoiceField(choices=Study._meta.get_field("priority").choices, required=False)


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "occurred_at", "username", "action", "study_instance_uid", "source_address"]
