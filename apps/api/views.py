"""/api/v1/: thin views over services and selectors. Querysets are filtered by role (lists too);
another reader's item answers 404. Every view of a study writes an audit event."""

from datetime import timedelta

from django.db.models import Count, Q
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.audit.models import AuditEvent
from apps.audit.services import audit_views
from apps.core import clock
from apps.pipeline.reports import routing_report
from apps.reading import services as reading
from apps.reading.models import Assignment, Radiologist
from apps.routing.models import Delivery, DeliveryItem
from apps.studies.models import Study

from . import serializers
from .errors import Conflict
from .permissions import Audits, HasRole, SeesEverything, Supervises, radiologist_of, sees_everything, supervises

ASSIGNMENT_FILTERS = {
    "study_instance_uid": "study__study_instance_uid",
    "accession_number": "study__accession_number",
    "status": "status",
    "radiologist": "radiologist_id",
    "priority": "study__priority",
}


@extend_schema(parameters=[serializers.AssignmentFilterSerializer])
class AssignmentViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = serializers.AssignmentSerializer
    lookup_value_regex = r"[0-9]+"  # anything else is not an assignment: 404, not a database error
    permission_classes = [IsAuthenticated, HasRole]

    def get_queryset(self):
        queryset = Assignment.objects.select_related("study__quality", "radiologist").order_by("-assigned_at", "-id")
        user = self.request.user
        if not sees_everything(user):
            queryset = queryset.filter(radiologist=radiologist_of(user))
        if self.action == "list":
            filters = serializers.AssignmentFilterSerializer(data=self.request.query_params)
            filters.is_valid(raise_exception=True)
            for param, value in filters.validated_data.items():
                queryset = queryset.filter(**{ASSIGNMENT_FILTERS[param]: value})
        return queryset

    def list(self, request, *args, **kwargs):
        response = super().list(request, *args, **kwargs)
        shown = [item["study"]["id"] for item in response.data["results"]]
        audit_views(request=request, action="api.assignments.list", studies=Study.objects.filter(pk__in=shown))
        return response

    def retrieve(self, request, *args, **kwargs):
        assignment = self.get_object()
        audit_views(request=request, action="api.assignments.detail", studies=[assignment.study])
        return Response(self.get_serializer(assignment).data)

    def _transition(self, request, change) -> Response:
        assignment = self.get_object()  # 404 for another reader's assignment
        mine = assignment.radiologist_id == getattr(radiologist_of(request.user), "pk", None)
        if not (mine or supervises(request.user)):
            raise PermissionDenied("Not your assignment.")
        if not change(assignment_id=assignment.pk):
            raise Conflict(f"Not possible from {assignment.status}.")
        assignment.refresh_from_db()
        return Response(self.get_serializer(assignment).data)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        return self._transition(request, reading.assignment_acknowledge)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._transition(request, reading.assignment_start)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def complete(self, request, pk=None):
        return self._transition(request, reading.assignment_complete)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, Supervises])
    def reassign(self, request, pk=None):
        assignment = self.get_object()
        replacement = reading.assignment_reassign(assignment_id=assignment.pk)
        if replacement is None:
            raise Conflict("No other eligible reader.")
        return Response(self.get_serializer(replacement).data)


class StudyViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A study by its Study Instance UID, with routing, delivery and assignment status."""

    serializer_class = serializers.StudyDetailSerializer
    permission_classes = [IsAuthenticated, HasRole]
    lookup_field = "study_instance_uid"
    lookup_value_regex = r"[0-9.]+"

    def get_queryset(self):
        queryset = Study.objects.select_related("quality", "routing_decision")
        user = self.request.user
        if not sees_everything(user):
            queryset = queryset.filter(assignments__radiologist=radiologist_of(user)).distinct()
        return queryset

    def retrieve(self, request, *args, **kwargs):
        study = self.get_object()
        audit_views(request=request, action="api.studies.detail", studies=[study])
        return Response(self.get_serializer(study).data)


class DeliveryViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = serializers.DeliverySerializer
    lookup_value_regex = r"[0-9]+"
    permission_classes = [IsAuthenticated, SeesEverything]

    def get_queryset(self):
        queryset = (
            Delivery.objects.select_related("destination", "study")
            .annotate(
                instances=Count("items"),
                delivered=Count(
                    "items", filter=Q(items__state__in=[DeliveryItem.State.DELIVERED, DeliveryItem.State.WARNING])
                ),
                committed=Count("items", filter=Q(items__committed_at__isnull=False)),
            )
            .order_by("-id")
        )
        if state := self.request.query_params.get("state"):
            queryset = queryset.filter(state=state)
        return queryset


class RadiologistViewSet(viewsets.ReadOnlyModelViewSet):
    """Readers and their status; a reader sets their own status, supervisors anyone's."""

    serializer_class = serializers.RadiologistStatusSerializer
    permission_classes = [IsAuthenticated, HasRole]
    lookup_value_regex = r"[0-9]+"

    def get_queryset(self):
        user = self.request.user
        queryset = Radiologist.objects.order_by("display_name")
        if getattr(self, "swagger_fake_view", False) or sees_everything(user):  # the schema has no user
            return queryset
        return queryset.filter(user=user)

    @extend_schema(request=serializers.RadiologistStatusSerializer)
    @action(detail=True, methods=["post"])
    def status(self, request, pk=None):
        radiologist = get_object_or_404(self.get_queryset(), pk=pk)
        if radiologist.user_id != request.user.pk and not supervises(request.user):
            raise PermissionDenied("Not your status.")
        serializer = self.get_serializer(radiologist, data=request.data)
        serializer.is_valid(raise_exception=True)
        reading.radiologist_status_set(
            radiologist_id=radiologist.pk, online=serializer.validated_data["status"] == Radiologist.Status.ONLINE
        )
        radiologist.refresh_from_db()
        return Response(self.get_serializer(radiologist).data)


class RoutingReportView(APIView):
    """The routing report over the last `days` days (default 7)."""

    permission_classes = [IsAuthenticated, SeesEverything]

    @extend_schema(parameters=[OpenApiParameter("days", int, required=False)], responses={200: dict})
    def get(self, request):
        try:
            days = max(1, min(int(request.query_params.get("days", 7)), 366))
        except ValueError:
            raise ValidationError({"days": "must be a whole number"}) from None
        end = clock.now()
        return Response(routing_report(start=end - timedelta(days=days), end=end))


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail, read-only, for auditors and staff; filter by study_instance_uid or username."""

    serializer_class = serializers.AuditEventSerializer
    permission_classes = [IsAuthenticated, Audits]
    lookup_value_regex = r"[0-9]+"

    @extend_schema(parameters=[OpenApiParameter("study_instance_uid", str), OpenApiParameter("username", str)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_queryset(self):
        queryset = AuditEvent.objects.all()
        for param in ("study_instance_uid", "username"):
            if value := self.request.query_params.get(param):
                queryset = queryset.filter(**{param: value[:150]})
        return queryset
