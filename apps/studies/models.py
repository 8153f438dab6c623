"""Received instances (the ingest outbox), studies, series, instances and their QC result."""

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class ReceivedInstance(models.Model):
    """One instance the SCP took custody of: the file is on disk before this row is committed."""

    class State(models.TextChoices):
        RECEIVED = "received"
        PERSISTED = "persisted"
        QUARANTINED = "quarantined"

    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    study_instance_uid = models.CharField(max_length=64, db_index=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    # Relative to STORAGE_ROOT; built from a uuid, never from sender-controlled text.
    path = models.CharField(max_length=255)
    size = models.BigIntegerField()
    calling_ae_title = models.CharField(max_length=16, blank=True)
    called_ae_title = models.CharField(max_length=16, blank=True)
    peer_address = models.CharField(max_length=64, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    error = models.TextField(blank=True)
    # Copies of this SOP Instance UID that arrived later with different content (kept once; QC flags it).
    conflicting_copies = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            # reconcile: received rows nobody has persisted yet, oldest first
            models.Index(fields=["state", "received_at"], name="received_state_idx"),
        ]

    def __str__(self) -> str:
        return self.sop_instance_uid


class Stage(models.TextChoices):
    """How far the pipeline has processed the study's current content.

    New instances set a study back to PERSISTED so every later step sees them.
    HELD and UNASSIGNED are waiting states: the chain stops there until a person or a sweeper acts.
    """

    RECEIVED = "received"
    PERSISTED = "persisted"
    CLASSIFIED = "classified"
    CHECKED = "checked"
    HELD = "held"
    REJECTED = "rejected"
    ROUTED = "routed"
    UNASSIGNED = "unassigned"
    ASSIGNED = "assigned"
    NOTIFIED = "notified"


class Priority(models.TextChoices):
    STAT = "STAT"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


class Study(models.Model):
    study_instance_uid = models.CharField(max_length=64, unique=True)
    patient_id = models.CharField(max_length=64, blank=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_birth_date = models.CharField(max_length=8, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    accession_number = models.CharField(max_length=16, blank=True)
    study_date = models.CharField(max_length=8, blank=True)
    # HHMMSS[.FFFFFF], padded to whole seconds at persist, so ranges compare as text.
    study_time = models.CharField(max_length=16, blank=True)
    study_id = models.CharField(max_length=16, blank=True, help_text="DICOM Study ID (0020,0010).")
    modality = models.CharField(max_length=16, blank=True)
    # Backslash-separated, as DICOM's ModalitiesInStudy.
    modalities = models.CharField(max_length=64, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    study_description = models.CharField(max_length=64, blank=True)
    institution_name = models.CharField(max_length=64, blank=True)
    referring_physician_name = models.CharField(max_length=324, blank=True)
    requested_priority = models.CharField(max_length=16, blank=True)
    calling_ae_title = models.CharField(max_length=16, blank=True)
    called_ae_title = models.CharField(max_length=16, blank=True)
    num_series = models.PositiveIntegerField(default=0)
    num_instances = models.PositiveIntegerField(default=0)
    total_size = models.BigIntegerField(default=0)

    specialty = models.CharField(max_length=64, blank=True)
    subspecialty = models.CharField(max_length=64, blank=True)
    priority = models.CharField(max_length=8, choices=Priority.choices, blank=True)
    workload = models.FloatField(default=1.0, help_text="RVU-like weight of the study, for balancing readers.")
    classification = models.JSONField(default=dict, blank=True)

    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.RECEIVED)
    stage_changed_at = models.DateTimeField(default=timezone.now)
    stage_detail = models.TextField(blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    protected = models.BooleanField(default=False, help_text="Its files are never purged automatically.")
    # An association is sending it now (set by its first instance when on-receipt rules exist, cleared when
    # the association ends): a streaming sender waits for more while it is set.
    arriving = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "studies"
        indexes = [
            # reconcile: studies whose stage has not moved for a while
            models.Index(fields=["stage", "stage_changed_at"], name="study_stage_idx"),
            # query/retrieve (C-FIND, QIDO-RS): the keys sites search by
            models.Index(fields=["patient_id"], name="study_patient_idx"),
            models.Index(fields=["accession_number"], name="study_accession_idx"),
            models.Index(fields=["study_date"], name="study_date_idx"),
            # a name prefix (DOE*): PostgreSQL uses an index for LIKE 'DOE%' only with the pattern operators
            models.Index(fields=["patient_name"], name="study_patient_name_idx", opclasses=["varchar_pattern_ops"]),
        ]

    def __str__(self) -> str:
        return self.accession_number or self.study_instance_uid

    def advance(self, stage: str, *, detail: str = "", now=None) -> None:
        self.stage = stage
        self.stage_detail = detail
        self.stage_changed_at = now or timezone.now()
        self.save(update_fields=["stage", "stage_detail", "stage_changed_at"])


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    series_number = models.CharField(max_length=12, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    series_description = models.CharField(max_length=64, blank=True)
    num_instances = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return self.series_instance_uid


class FileState(models.TextChoices):
    """Where an instance's file is in its life. A purge marks the row PURGING before it removes the file,
    so no row ever names a missing file unmarked; a purge that died half way is finished by the next."""

    STORED = "stored"
    PURGING = "purging"
    PURGED = "purged"


class PurgeReason(models.TextChoices):
    DELIVERED = "delivered", "delivered (or given up) everywhere it was routed"
    UNROUTED = "unrouted", "no rule matched"
    FAILED = "failed", "a delivery failed for good"
    REJECTED = "rejected", "rejected at QC"
    DELETED = "deleted", "deleted by an operator"


class Instance(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="instances")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    received = models.OneToOneField(ReceivedInstance, on_delete=models.PROTECT, related_name="instance")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    instance_number = models.CharField(max_length=12, blank=True)
    path = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # The header fields QC needs per instance, kept so a re-check reads no file.
    header = models.JSONField(default=dict, blank=True)
    file_state = models.CharField(max_length=8, choices=FileState.choices, default=FileState.STORED)
    purged_at = models.DateTimeField(null=True, blank=True)
    purge_reason = models.CharField(max_length=16, choices=PurgeReason.choices, blank=True)

    class Meta:
        indexes = [
            # the purge: a study's instances whose file is still stored (or a purge left half done)
            models.Index(fields=["study", "file_state"], name="instance_file_idx"),
        ]

    def __str__(self) -> str:
        return self.sop_instance_uid


class QualityAssessment(models.Model):
    class Verdict(models.TextChoices):
        PASSED = "passed"
        FLAGGED = "flagged"
        HELD = "held"
        RELEASED = "released"
        REJECTED = "rejected"

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="quality")
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    # One entry per check (and per series for pixel checks): check, passed, value, detail, policy.
    checks = models.JSONField(default=list)
    assessed_at = models.DateTimeField(default=timezone.now)
    decided_by = models.CharField(max_length=150, blank=True, help_text="Who released or rejected a hold.")
    decided_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.study_id}: {self.verdict}"

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.checks if not c.get("passed", True)]


class QcCheck(models.Model):
    """What a QC check does when it fails, and its limits for pixel metrics; per modality ("*": any).

    A modality's own row wins over the "*" row for the same check."""

    class Policy(models.TextChoices):
        FLAG = "flag", "flag (go on, marked)"
        HOLD = "hold", "hold (stop before routing until released)"

    name = models.CharField(max_length=64, help_text="The check, e.g. one_patient or saturation.")
    modality = models.CharField(max_length=16, default="*")
    min_value = models.FloatField(null=True, blank=True)
    max_value = models.FloatField(null=True, blank=True)
    policy = models.CharField(max_length=8, choices=Policy.choices, default=Policy.FLAG)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name", "modality"]
        constraints = [models.UniqueConstraint(fields=["name", "modality"], name="qc_check_unique")]

    def __str__(self) -> str:
        return f"{self.name} ({self.modality}): {self.policy}"


class PriorityKeyword(models.Model):
    """A word in the study or requested procedure description that raises the priority."""

    keyword = models.CharField(max_length=64, unique=True)
    priority = models.CharField(max_length=8, choices=Priority.choices)

    def __str__(self) -> str:
        return f"{self.keyword} -> {self.priority}"


class WorkloadWeight(models.Model):
    """RVU-like weight of a study by modality and body part (empty body part: any); the most specific row wins."""

    modality = models.CharField(max_length=16)
    body_part = models.CharField(max_length=64, blank=True)
    weight = models.FloatField()

    class Meta:
        ordering = ["modality", "body_part"]
        constraints = [models.UniqueConstraint(fields=["modality", "body_part"], name="workload_weight_unique")]

    def __str__(self) -> str:
        return f"{self.modality} {self.body_part or '*'}: {self.weight}"


class SpecialtyMapping(models.Model):
    """An ordered rule from modality and body part to a reading specialty; the first match wins."""

    order = models.PositiveIntegerField(default=100)
    modality = models.CharField(max_length=16, blank=True, help_text="Empty matches any modality.")
    body_parts = models.CharField(
        max_length=255,
        blank=True,
        help_text="Comma-separated BodyPartExamined values; empty matches any body part.",
    )
    description_pattern = models.CharField(
        max_length=255, blank=True, help_text="Regular expression searched in the study and series descriptions."
    )
    specialty = models.CharField(max_length=64)
    subspecialty = models.CharField(max_length=64, blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return f"{self.modality or '*'} / {self.body_parts or '*'} -> {self.specialty}"

    def clean(self) -> None:
        if self.description_pattern:
            try:
                re.compile(self.description_pattern)
            except re.error as exc:
                raise ValidationError({"description_pattern": f"Not a valid regular expression: {exc}"}) from exc

    @property
    def body_part_list(self) -> list[str]:
        return [p.strip().upper() for p in self.body_parts.split(",") if p.strip()]


class RetentionPolicy(models.Model):
    """How long files are kept once nothing more is to be done with them; one row (the first), edited in
    the admin or the configuration document's `retention:`. Rows of studies are kept whatever happens."""

    delivered_hours = models.PositiveIntegerField(
        default=72, help_text="After the study's last delivery, once every delivery ended in success or was given up."
    )
    unrouted_hours = models.PositiveIntegerField(default=720, help_text="Studies no rule matched.")
    failed_hours = models.PositiveIntegerField(
        null=True, blank=True, help_text="Instances a delivery failed for good; empty: never (an operator retries)."
    )
    rejected_hours = models.PositiveIntegerField(default=720, help_text="Studies rejected at QC.")
    emergency_free_bytes = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Below this much free space, purgeable files go oldest first whatever their retention; "
        "empty: 4 x STORAGE_MIN_FREE_BYTES (where the SCP starts refusing).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "retention policy"

    def __str__(self) -> str:
        return "retention policy"

    @classmethod
    def current(cls) -> "RetentionPolicy":
        return cls.objects.order_by("id").first() or cls()

    def emergency_threshold(self, min_free_bytes: int) -> int:
        return self.emergency_free_bytes if self.emergency_free_bytes is not None else 4 * min_free_bytes


class PurgeRun(models.Model):
    """One run of the purge: what it removed, by reason, and what was left that an emergency could take."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    emergency = models.BooleanField(default=False)
    files = models.PositiveIntegerField(default=0)
    bytes_freed = models.JSONField(default=dict, help_text="Bytes removed, by reason.")
    purgeable_bytes = models.BigIntegerField(default=0, help_text="Left that an emergency could purge.")
    free_bytes = models.BigIntegerField(null=True, blank=True, help_text="Free space when it ended.")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"purge {self.started_at:%Y-%m-%d %H:%M}: {self.files} files"


class StorageEmergency(models.Model):
    """An episode of free space below the emergency threshold: staff are told once per episode."""

    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    free_bytes = models.BigIntegerField(help_text="Free space when it started.")

    class Meta:
        ordering = ["-started_at"]
        verbose_name_plural = "storage emergencies"

    def __str__(self) -> str:
        return f"storage emergency from {self.started_at:%Y-%m-%d %H:%M}"


class HeldStudy(Study):
    """The studies QC holds, as their own list in the admin (release or reject)."""

    class Meta:
        proxy = True
        verbose_name = "study held for QC"
        verbose_name_plural = "studies held for QC"
