"""Prior fetching: rules (which earlier studies of a patient to bring from which archive), and the work
they start: one fetch per (new study, rule, destination), one row per prior it has moved or will move."""

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from apps.routing.models import Destination, Protocol
from apps.studies.models import Study

from .selection import Match


class PriorRule(models.Model):
    """When a study has been routed to a destination, ask `archive` for the patient's earlier studies
    (C-FIND, Study Root, STUDY level, by PatientID) and have the relevant ones moved (C-MOVE) to that
    destination: the archive must know the destination's AE title."""

    name = models.CharField(max_length=128, unique=True)
    enabled = models.BooleanField(default=True)
    archive = models.ForeignKey(
        Destination,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The DICOM node asked for priors (C-FIND, C-MOVE); its timeouts, TLS and retry policy apply.",
    )
    match = models.CharField(max_length=32, choices=Match.choices, default=Match.MODALITY)
    max_age_years = models.PositiveIntegerField(
        null=True, blank=True, default=5, help_text="Only studies at most this old (from the new study's date)."
    )
    max_count = models.PositiveIntegerField(default=2, help_text="At most this many priors, newest first.")
    modalities = models.CharField(
        max_length=128,
        blank=True,
        help_text="Comma-separated: the rule applies only to new studies of these modalities; empty: any.",
    )
    description = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def modality_list(self) -> list[str]:
        return [m.strip().upper() for m in self.modalities.split(",") if m.strip()]

    def applies_to(self, modalities: set[str]) -> bool:
        wanted = self.modality_list()
        return not wanted or bool(set(wanted) & modalities)

    def clean(self) -> None:
        if self.archive_id and self.archive.protocol != Protocol.DICOM:
            raise ValidationError({"archive": "The archive must be a DICOM node (C-FIND and C-MOVE)."})
        if self.max_count < 1:
            raise ValidationError({"max_count": "At least one prior."})


class PriorFetch(models.Model):
    """Asking one archive for one new study's priors for one destination: a unit of work with a state."""

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="prior_fetches")
    rule = models.ForeignKey(PriorRule, on_delete=models.CASCADE, related_name="fetches")
    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    queried_at = models.DateTimeField(null=True, blank=True, help_text="When the archive answered the C-FIND.")
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    detail = models.CharField(max_length=255, blank=True)
    # Every study the archive listed, with the verdict and its reason (chosen or not): the explanation.
    candidates = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "prior fetches"
        constraints = [
            models.UniqueConstraint(fields=["study", "rule", "destination"], name="prior_fetch_unique"),
        ]
        indexes = [
            # prior_fetches_due: pending fetches whose next attempt has come
            models.Index(fields=["state", "next_attempt_at"], name="prior_fetch_due_idx"),
        ]

    def __str__(self) -> str:
        return f"priors of study {self.study_id} -> {self.destination_id}: {self.state}"


class PriorStudy(models.Model):
    """One prior chosen by a fetch: moved from the archive to the fetch's destination, or why not."""

    class State(models.TextChoices):
        PENDING = "pending"
        MOVED = "moved"
        ALREADY_THERE = "already_there", "already at the destination"
        FAILED = "failed"

    fetch = models.ForeignKey(PriorFetch, on_delete=models.CASCADE, related_name="priors")
    study_instance_uid = models.CharField(max_length=64)
    study_date = models.CharField(max_length=8, blank=True)
    modalities = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    status = models.IntegerField(null=True, blank=True, help_text="The archive's final C-MOVE status.")
    completed = models.PositiveIntegerField(default=0, help_text="Instances the archive sent.")
    failed = models.PositiveIntegerField(default=0, help_text="Instances the archive could not send.")
    error = models.TextField(blank=True)
    moved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "prior studies"
        constraints = [
            models.UniqueConstraint(fields=["fetch", "study_instance_uid"], name="prior_study_unique"),
        ]
        indexes = [
            # already at the destination: priors moved by any fetch, by Study Instance UID
            models.Index(fields=["study_instance_uid", "state"], name="prior_study_uid_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.study_instance_uid} ({self.state})"
