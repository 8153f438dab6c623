"""Radiologists, their shifts, and assignments of studies to them."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.core.models import WeeklyWindow
from apps.studies.models import Study


class Radiologist(models.Model):
    class Status(models.TextChoices):
        ONLINE = "online"
        OFFLINE = "offline"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="radiologist")
    display_name = models.CharField(max_length=128)
    specialty = models.CharField(max_length=64, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ONLINE)

    class Meta:
        ordering = ["display_name"]

    def __str__(self) -> str:
        return self.display_name


class Shift(WeeklyWindow):
    radiologist = models.ForeignKey(Radiologist, on_delete=models.CASCADE, related_name="shifts")

    class Meta:
        ordering = ["id"]


class Assignment(models.Model):
    class Status(models.TextChoices):
        ASSIGNED = "assigned"
        ACKNOWLEDGED = "acknowledged"
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        CANCELLED = "cancelled"

    OPEN = (Status.ASSIGNED, Status.ACKNOWLEDGED, Status.IN_PROGRESS)

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="assignments")
    radiologist = models.ForeignKey(Radiologist, on_delete=models.PROTECT, related_name="assignments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ASSIGNED)
    assigned_at = models.DateTimeField(default=timezone.now)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Why this reader: every candidate considered, with open work, and why the others were excluded.
    explanation = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            # At most one open assignment per study, whatever two workers do at once.
            models.UniqueConstraint(
                fields=["study"],
                condition=Q(status__in=["assigned", "acknowledged", "in_progress"]),
                name="one_open_assignment_per_study",
            )
        ]
        indexes = [
            # workload: open assignments per radiologist
            models.Index(fields=["radiologist", "status"], name="assignment_workload_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.study_id} -> {self.radiologist_id}: {self.status}"
