"""Radiologists, their shifts, and assignments of studies to them."""

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.studies.models import Study

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


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


class Shift(models.Model):
    """A weekly working window in its own timezone. An end at or before the start crosses midnight:
    the window opens on the listed day and closes on the next. An end of 23:59 runs to midnight."""

    radiologist = models.ForeignKey(Radiologist, on_delete=models.CASCADE, related_name="shifts")
    weekdays = models.CharField(max_length=64, help_text="Comma-separated: mon,tue,wed,thu,fri,sat,sun")
    start = models.TimeField()
    end = models.TimeField()
    timezone = models.CharField(max_length=64, default="UTC")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.weekdays} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"

    @property
    def weekday_numbers(self) -> frozenset[int]:
        return frozenset(WEEKDAYS.index(d.strip().lower()) for d in self.weekdays.split(",") if d.strip())

    def clean(self) -> None:
        days = [d.strip().lower() for d in self.weekdays.split(",") if d.strip()]
        unknown = [d for d in days if d not in WEEKDAYS]
        if not days or unknown:
            raise ValidationError({"weekdays": f"Use {', '.join(WEEKDAYS)}; got {', '.join(unknown) or 'none'}."})
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValidationError({"timezone": f"Unknown timezone {self.timezone!r}."}) from exc


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
