"""Radiologists, their shifts, and assignments of studies to them."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.core.models import WeeklyWindow
from apps.studies.models import Priority, Study


class Radiologist(models.Model):
    class Status(models.TextChoices):
        ONLINE = "online"
        OFFLINE = "offline"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="radiologist")
    display_name = models.CharField(max_length=128)
    specialty = models.CharField(max_length=64, db_index=True)
    subspecialty = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ONLINE)
    capacity = models.FloatField(default=20.0, help_text="Most open work (summed study workload) at once.")
    seniority = models.PositiveSmallIntegerField(default=0, help_text="Years; STAT studies prefer senior readers.")
    max_per_hour = models.PositiveIntegerField(default=0, help_text="Most studies assigned in an hour; 0: no limit.")

    class Meta:
        ordering = ["display_name"]

    def __str__(self) -> str:
        return self.display_name


class Shift(WeeklyWindow):
    radiologist = models.ForeignKey(Radiologist, on_delete=models.CASCADE, related_name="shifts")
    sets_online = models.BooleanField(
        default=False, help_text="During this shift the reader counts as online, whatever their status."
    )

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
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True, help_text="Instances arrived after assignment.")
    # SLA due times, from the study's receipt (one clock from receipt to report).
    acknowledge_due_at = models.DateTimeField(null=True, blank=True)
    report_due_at = models.DateTimeField(null=True, blank=True)
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


class Privilege(models.Model):
    """A reader's privilege to read for an institution, until it expires. A reader with no privilege rows
    reads for every institution; one with rows reads only where a current privilege says so."""

    radiologist = models.ForeignKey(Radiologist, on_delete=models.CASCADE, related_name="privileges")
    institution = models.CharField(max_length=64)
    expires_on = models.DateField(null=True, blank=True)
    expiry_warned_on = models.DateField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["radiologist", "institution"], name="privilege_unique")]

    def __str__(self) -> str:
        return f"{self.radiologist_id} @ {self.institution} until {self.expires_on or 'no expiry'}"


class SlaPolicy(models.Model):
    """Targets per priority, from the study's receipt: acknowledge within, report within. A row with an
    institution overrides the default row (empty institution) for that institution's contract."""

    priority = models.CharField(max_length=8, choices=Priority.choices)
    institution = models.CharField(max_length=64, blank=True)
    acknowledge_minutes = models.PositiveIntegerField()
    report_minutes = models.PositiveIntegerField()
    at_risk_fraction = models.FloatField(default=0.8, help_text="At risk once this fraction of a target has passed.")

    class Meta:
        ordering = ["priority", "institution"]
        constraints = [models.UniqueConstraint(fields=["priority", "institution"], name="sla_policy_unique")]

    def __str__(self) -> str:
        return (
            f"{self.priority} {self.institution or '(default)'}: {self.acknowledge_minutes}/{self.report_minutes} min"
        )


class SlaEvent(models.Model):
    """An SLA threshold crossed by an assignment; once per (assignment, kind), whatever Beat does."""

    class Kind(models.TextChoices):
        ACK_AT_RISK = "ack_at_risk"
        ACK_BREACHED = "ack_breached"
        REPORT_AT_RISK = "report_at_risk"
        REPORT_BREACHED = "report_breached"

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="sla_events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    due_at = models.DateTimeField()
    occurred_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["assignment", "kind"], name="sla_event_once")]

    def __str__(self) -> str:
        return f"{self.assignment_id}: {self.kind}"


class EscalationStep(models.Model):
    """One step of a STAT study's escalation when nobody acknowledges it: 1 remind the reader, 2 reassign to
    the next eligible reader, 3 tell the supervisors. Once per (study, level): a database key, not a hope."""

    class Level(models.IntegerChoices):
        REMIND = 1
        REASSIGN = 2
        SUPERVISORS = 3

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="escalations")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="escalations")
    level = models.PositiveSmallIntegerField(choices=Level.choices)
    due_at = models.DateTimeField()
    done_at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["study", "level"]
        constraints = [models.UniqueConstraint(fields=["study", "level"], name="escalation_step_once")]

    def __str__(self) -> str:
        return f"study {self.study_id} level {self.level}"
