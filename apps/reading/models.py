"""Radiologists, their shifts, and assignments of studies to them."""

from django.conf import settings
from django.core.exceptions import ValidationError
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


class EscalationPolicy(models.Model):
    """The escalation ladder of one priority: when nobody acknowledges a study of it, step k (of `steps`) is
    taken at the first assignment's acknowledge target + (k - 1) windows. Shipped: STAT, 5 minutes, remind
    the reader, reassign to the next eligible reader, tell the supervisors."""

    class Action(models.TextChoices):
        REMIND = "remind", "remind the reader"
        REASSIGN = "reassign", "reassign to the next eligible reader"
        SUPERVISORS = "supervisors", "tell the supervisors"

    priority = models.CharField(max_length=8, choices=Priority.choices, unique=True)
    window_minutes = models.PositiveIntegerField(default=5, help_text="Minutes between one step and the next.")
    steps = models.CharField(
        max_length=200,
        default="remind,reassign,supervisors",
        help_text="Comma-separated, in order: remind, reassign, supervisors.",
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority"]
        verbose_name_plural = "escalation policies"

    def __str__(self) -> str:
        return f"{self.priority}: {self.steps} every {self.window_minutes} min"

    @property
    def actions(self) -> list[str]:
        return [step.strip() for step in self.steps.split(",") if step.strip()]

    def clean(self) -> None:
        unknown = [a for a in self.actions if a not in self.Action.values]
        if unknown or not self.actions:
            raise ValidationError({"steps": f"a list of {', '.join(self.Action.values)}; not {', '.join(unknown)}"})
        if len(self.actions) > 9:
            raise ValidationError({"steps": "at most 9 steps"})


class EscalationStep(models.Model):
    """One step taken in a study's escalation when nobody acknowledges it; what it did (`action`) is the
    policy's step at `level` when it was taken. Once per (study, level): a database key, not a hope."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="escalations")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="escalations")
    level = models.PositiveSmallIntegerField()
    action = models.CharField(max_length=16, choices=EscalationPolicy.Action.choices, default="remind")
    due_at = models.DateTimeField()
    done_at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["study", "level"]
        constraints = [models.UniqueConstraint(fields=["study", "level"], name="escalation_step_once")]

    def __str__(self) -> str:
        return f"study {self.study_id} level {self.level} ({self.action})"


class WorklistPreference(models.Model):
    """What one user chose for their worklist and board: theme, whether opening a STAT study acknowledges it,
    and the filters and search they last used (kept here, never in a URL or a log: the search may be a
    patient id). A user without a row has the defaults."""

    class Theme(models.TextChoices):
        DARK = "dark"
        LIGHT = "light"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="worklist_preference")
    theme = models.CharField(max_length=8, choices=Theme.choices, default=Theme.DARK)
    open_acknowledges_stat = models.BooleanField(
        "opening a STAT study acknowledges it",
        default=False,
        help_text="Open in the viewer also acknowledges a STAT assignment not acknowledged yet.",
    )
    # {"priority": [...], "modality": "...", "institution": "...", "status": [...], "q": "..."}
    # (apps/reading/worklist_filters.py parses and cleans it).
    filters = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"worklist preference of {self.user_id}"
