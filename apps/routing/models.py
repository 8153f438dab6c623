"""Destinations, routing rules with typed criteria, decisions, and the delivery ledger."""

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from pydicom import datadict as keyword_dictionary

from apps.core import secret_refs
from apps.core.models import WeeklyWindow
from apps.studies.models import Instance, Study
from apps.transforms.models import TransformProfile

from .viewer import viewer_template_errors


class Health(models.TextChoices):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Protocol(models.TextChoices):
    DICOM = "dicom", "DICOM (C-STORE)"
    DICOMWEB = "dicomweb", "DICOMweb (STOW-RS)"


class WebAuth(models.TextChoices):
    NONE = "none"
    BASIC = "basic"
    BEARER = "bearer"
    TOKEN = "token", "token (Authorization: Token …, as this router's own STOW-RS receiver takes it)"


class Destination(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    protocol = models.CharField(max_length=8, choices=Protocol.choices, default=Protocol.DICOM)
    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    enabled = models.BooleanField(default=True)
    max_attempts = models.PositiveIntegerField(default=8, help_text="Attempts before a delivery is failed.")
    retry_base_delay = models.PositiveIntegerField(default=10, help_text="Seconds before the first retry.")
    retry_max_delay = models.PositiveIntegerField(default=600, help_text="Longest wait between retries.")
    connect_timeout = models.PositiveIntegerField(default=10)
    dimse_timeout = models.PositiveIntegerField(default=30)
    network_timeout = models.PositiveIntegerField(default=60)
    max_associations = models.PositiveIntegerField(
        default=2, help_text="Concurrent associations to this destination, across every worker."
    )
    alternate = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Used while this destination has been unreachable longer than 'alternate after'.",
    )
    alternate_after = models.PositiveIntegerField(default=900, help_text="Seconds unreachable before the alternate.")
    retention_hours = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Hours a study's files are kept after its last delivery, for what was delivered here; "
        "empty: the retention policy's delivered hours (docs/storage.md).",
    )
    health = models.CharField(max_length=8, choices=Health.choices, default=Health.UNKNOWN)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    down_since = models.DateTimeField(null=True, blank=True)
    health_detail = models.CharField(max_length=255, blank=True)
    # Learned, not configured: a destination that left one of our association requests unanswered while it
    # served `busy_limit` others of ours (dcmtk's storescp without --fork serves one at a time) gets no more
    # than that many at once for a while after `busy_at`, instead of a second request that would time out.
    busy_limit = models.PositiveIntegerField(null=True, blank=True)
    busy_at = models.DateTimeField(null=True, blank=True)
    # DICOM TLS (docs/security.md): files by path on the workers' hosts, never their contents.
    tls_enabled = models.BooleanField("TLS", default=False)
    tls_ca_file = models.CharField(
        "TLS CA file", max_length=500, blank=True, help_text="PEM bundle to verify the destination; empty: system CAs."
    )
    tls_cert_file = models.CharField("TLS client certificate", max_length=500, blank=True)
    tls_key_file = models.CharField("TLS client key", max_length=500, blank=True)
    tls_verify = models.BooleanField("verify the destination's certificate", default=True)
    tls_check_hostname = models.BooleanField("check its host name", default=False)
    # A permanent configuration error (a certificate that does not verify) pauses every delivery to the
    # destination: no retry mends it. Cleared when the destination is saved again, or resumed in admin.
    config_error = models.CharField(max_length=255, blank=True)
    config_error_at = models.DateTimeField(null=True, blank=True)
    # What its certificate said at our last TLS association, for the expiry warning.
    tls_peer_not_after = models.DateTimeField(null=True, blank=True)
    tls_peer_fingerprint = models.CharField(max_length=64, blank=True)
    # DICOMweb (protocol dicomweb): STOW-RS to `dicomweb_url` + /studies, in batches (docs/configuration.md).
    dicomweb_url = models.CharField("DICOMweb base URL", max_length=500, blank=True)
    dicomweb_auth = models.CharField("authentication", max_length=8, choices=WebAuth.choices, default=WebAuth.NONE)
    dicomweb_credentials = models.CharField(
        "credentials",
        max_length=255,
        blank=True,
        help_text="Where they are, never what: env:VARIABLE or file:/path holding user:password (basic) or the "
        "token (bearer).",
    )
    request_timeout = models.PositiveIntegerField(default=60, help_text="Seconds for one STOW-RS request.")
    batch_count = models.PositiveIntegerField(default=10, help_text="Instances per STOW-RS request, at most.")
    batch_bytes = models.PositiveBigIntegerField(default=10 * 2**20, help_text="Bytes per STOW-RS request, at most.")
    dicomweb_verify = models.BooleanField(
        "verify by QIDO-RS",
        default=False,
        help_text="After each batch, look up the instances the answer said were stored (one QIDO-RS search): "
        "Orthanc's DICOMweb plugin up to 1.9 reports instances it did not store as stored.",
    )
    transform = models.ForeignKey(
        TransformProfile,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="destinations",
        help_text="What it receives instead of the original bytes (a rule may choose another); empty: the originals.",
    )
    # Storage commitment (PS3.4 Annex J, Push Model; docs/storage-commitment.md): after a delivery, ask the
    # destination to commit to what it received; its files are purged only once it did.
    storage_commitment = models.BooleanField(
        default=False,
        help_text="After each delivery, ask the destination by N-ACTION to commit to the instances it received "
        "(Storage Commitment Push Model); its answer (N-EVENT-REPORT) comes to this router's SCP, under the AE "
        "title the destination knows it by. Instances it reports failed are sent again; files are purged only "
        "once committed.",
    )
    commitment_timeout = models.PositiveIntegerField(
        default=300,
        help_text="Seconds to wait for the destination's report after it accepted a commitment request; then "
        "staff are told and the request is sent again (a few times, then the delivery fails).",
    )
    # The worklist's "Open" link for studies delivered here (apps/routing/viewer.py, docs/worklist.md).
    viewer_url_template = models.CharField(
        "viewer URL template",
        max_length=500,
        blank=True,
        help_text="The viewer page of a study delivered here, with {StudyInstanceUID} and/or {AccessionNumber}, "
        "e.g. https://viewer.example.org/viewer?StudyInstanceUIDs={StudyInstanceUID}; empty: no Open link.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"

    def clean(self) -> None:
        if self.protocol == Protocol.DICOMWEB:
            if not self.dicomweb_url.startswith(("http://", "https://")):
                raise ValidationError({"dicomweb_url": "A DICOMweb destination needs an http(s):// base URL."})
            if self.dicomweb_auth != WebAuth.NONE and not secret_refs.is_reference(self.dicomweb_credentials):
                raise ValidationError({"dicomweb_credentials": "env:VARIABLE or file:/path"})
            if not self.batch_count or not self.batch_bytes:
                raise ValidationError({"batch_count": "Batches need at least one instance and one byte."})
        if not 1 <= self.port <= 65535:
            raise ValidationError({"port": "Port must be between 1 and 65535."})
        if not self.ae_title.strip() or "\\" in self.ae_title:
            raise ValidationError({"ae_title": "AE title must be 1-16 characters without backslash."})
        if self.alternate_id and self.alternate_id == self.pk:
            raise ValidationError({"alternate": "A destination cannot be its own alternate."})
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValidationError({"tls_key_file": "A client certificate needs its key, and a key its certificate."})
        if self.storage_commitment and self.protocol != Protocol.DICOM:
            raise ValidationError(
                {"storage_commitment": "Storage commitment is a DICOM service: a DICOMweb destination has none."}
            )
        if (self.tls_ca_file or self.tls_cert_file) and not self.tls_enabled:
            raise ValidationError({"tls_enabled": "TLS files are set: turn TLS on, or clear them."})
        if errors := viewer_template_errors(self.viewer_url_template):
            raise ValidationError({"viewer_url_template": "The viewer URL template " + "; ".join(errors) + "."})


class DeliveryWindow(WeeklyWindow):
    """When routine studies may be sent to a destination (STAT goes at once). No window: any time."""

    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="windows")

    class Meta:
        ordering = ["id"]


class ForwardMode(models.TextChoices):
    AFTER_QC = "after_qc", "after QC (a QC hold stops it)"
    ON_RECEIPT = "on_receipt", "on receipt (each instance as it is stored, before QC: a QC hold cannot stop it)"


# Criteria an on-receipt rule cannot have: they need the whole study, which has not arrived when it decides.
WHOLE_STUDY_ATTRIBUTES = {"sop_class"}


class RoutingRule(models.Model):
    name = models.CharField(max_length=128, unique=True)
    priority = models.IntegerField(default=100, help_text="Higher runs first.")
    enabled = models.BooleanField(default=True)
    exclusive = models.BooleanField(default=False, help_text="When this rule matches, stop evaluating.")
    fallback = models.BooleanField(default=False, help_text="Applies only when no other rule matched.")
    forward_mode = models.CharField(
        max_length=16,
        choices=ForwardMode.choices,
        default=ForwardMode.AFTER_QC,
        help_text="On receipt: decided on the study's first instance and each instance forwarded as soon as it is "
        "stored, while the study still arrives. QC still runs and flags, but cannot hold what was already sent.",
    )
    destinations = models.ManyToManyField(Destination, related_name="rules", blank=True)
    assign_after_delivery = models.BooleanField(
        "assign after verified delivery",
        default=False,
        help_text="This rule's destinations are where the study is read: it is assigned to a radiologist only "
        "once each of them has it (delivered, and committed where the destination has storage commitment), so "
        "nobody is told of a study their PACS does not show yet. STAT studies keep their lane.",
    )
    description = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-priority", "name"]

    def __str__(self) -> str:
        return self.name


class RuleTransform(models.Model):
    """When this rule sends a study to this destination, the destination receives it through this profile
    (instead of the destination's own)."""

    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="transforms")
    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="+")
    profile = models.ForeignKey(TransformProfile, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "destination"], name="rule_transform_unique")]

    def __str__(self) -> str:
        return f"{self.rule_id} -> {self.destination_id} via {self.profile_id}"


class RuleWindow(WeeklyWindow):
    """When a rule applies. A rule with no window applies at any time."""

    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="windows")

    class Meta:
        ordering = ["id"]


class RuleCriterion(models.Model):
    class Attribute(models.TextChoices):
        MODALITY = "modality"
        BODY_PART = "body_part"
        STUDY_DESCRIPTION = "study_description"
        INSTITUTION = "institution"
        REFERRING_PHYSICIAN = "referring_physician"
        PRIORITY = "priority"
        CALLING_AE = "calling_ae"
        CALLED_AE = "called_ae"
        SOP_CLASS = "sop_class"
        KEYWORD = "keyword"

    class Operator(models.TextChoices):
        EQUALS = "equals"
        CONTAINS = "contains"
        REGEX = "regex"
        IN = "in"
        NOT_IN = "not_in"
        PRESENT = "present"
        ABSENT = "absent"

    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="criteria")
    attribute = models.CharField(max_length=32, choices=Attribute.choices)
    keyword = models.CharField(max_length=64, blank=True, help_text="The DICOM keyword, for attribute 'keyword'.")
    operator = models.CharField(max_length=16, choices=Operator.choices, default=Operator.EQUALS)
    value = models.CharField(max_length=1024, blank=True, help_text="For 'in' and 'not_in': comma-separated.")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.attribute} {self.operator} {self.value}"

    def clean(self) -> None:
        rule = self.rule if self.rule_id else None
        if (
            rule is not None
            and rule.forward_mode == ForwardMode.ON_RECEIPT
            and self.attribute in WHOLE_STUDY_ATTRIBUTES
        ):
            raise ValidationError(
                {
                    "attribute": f"An on-receipt rule decides on the first instance: {self.attribute} needs "
                    "the whole study."
                }
            )
        if self.operator == self.Operator.REGEX:
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValidationError({"value": f"Not a valid regular expression: {exc}"}) from exc
        if self.operator not in (self.Operator.PRESENT, self.Operator.ABSENT) and not self.value:
            raise ValidationError({"value": "This operator needs a value."})
        if self.attribute == self.Attribute.KEYWORD and not keyword_dictionary.tag_for_keyword(self.keyword):
            raise ValidationError({"keyword": f"{self.keyword!r} is not a DICOM keyword."})
        if self.attribute != self.Attribute.KEYWORD and self.keyword:
            raise ValidationError({"keyword": "Only the attribute 'keyword' takes a keyword."})


class RoutingDecision(models.Model):
    """Why a study went where it went: the rules that matched, and for each other rule what failed."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="routing_decision")
    matched_rules = models.JSONField(default=list)
    destinations = models.JSONField(default=list)
    explanation = models.JSONField(default=list)
    unrouted = models.BooleanField(default=False, db_index=True)
    decided_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.study_id}: {', '.join(self.destinations) or 'unrouted'}"


class StreamDecision(models.Model):
    """Where the on-receipt rules sent a study, decided on its first instance; checked against the full
    decision after QC. A destination the full decision drops is a discrepancy for staff: what was sent is sent."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="stream_decision")
    matched_rules = models.JSONField(default=list)
    destinations = models.JSONField(default=list)
    explanation = models.JSONField(default=list)
    decided_at = models.DateTimeField(default=timezone.now)
    # Filled when the study is routed after QC: destinations streamed to that the full decision does not name.
    discrepancy = models.JSONField(default=list, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.study_id}: {', '.join(self.destinations) or 'none'} (on receipt)"


class Delivery(models.Model):
    """Sending one study to one destination; its items say which instances are still to go."""

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"
        GIVEN_UP = "given_up", "given up (by an operator)"
        # Everything that could go went; some instances may not go through its transform (items say why).
        HELD = "held"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="deliveries")
    destination = models.ForeignKey(Destination, on_delete=models.PROTECT, related_name="deliveries")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Times it ended in `failed` (an operator's retry can fail again: each failure is told once).
    failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The last attempt that sent something: when it ended and how long it took from its claim (the
    # per-destination send-time histogram of /metrics; claimed_at is a lease, renewed while sending).
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_seconds = models.FloatField(null=True, blank=True)
    # The destination actually used while sending: the primary, or its alternate.
    target = models.ForeignKey(Destination, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Chosen when the study was routed (the rule's, else the destination's); late instances use the same.
    transform = models.ForeignKey(
        TransformProfile, null=True, blank=True, on_delete=models.PROTECT, related_name="deliveries"
    )

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [models.UniqueConstraint(fields=["study", "destination"], name="delivery_unique")]
        indexes = [
            # deliveries_due: pending deliveries whose next attempt has come
            models.Index(fields=["state", "next_attempt_at"], name="delivery_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.study_id} -> {self.destination_id}: {self.state}"


class DeliveryItem(models.Model):
    """One (instance, destination) pair: tracked until the destination answered success."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        WARNING = "warning"
        FAILED = "failed"
        HELD = "held", "held (its transform refused it)"

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="items")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="delivery_items")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    status = models.IntegerField(null=True, blank=True, help_text="The destination's DIMSE status.")
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)
    # What went on the wire for this destination: the stored file's SHA-256, or its transform's.
    sent_sha256 = models.CharField(max_length=64, blank=True)
    # The SOP Instance UID of what was sent where a transform gave the copy another (a de-identified one):
    # what the destination knows it by (storage commitment). Empty: the instance's own.
    sent_sop_instance_uid = models.CharField(max_length=64, blank=True)
    # When the destination committed to storing it (storage commitment): its N-EVENT-REPORT said so.
    committed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["delivery", "instance"], name="delivery_item_unique")]

    def __str__(self) -> str:
        return f"{self.instance_id} via {self.delivery_id}: {self.state}"


class CommitmentRequest(models.Model):
    """One storage commitment transaction (N-ACTION, Push Model) for a delivery's delivered instances, and
    what became of it. The destination's N-EVENT-REPORT is matched by `transaction_uid`."""

    class State(models.TextChoices):
        REQUESTED = "requested"  # sent (or to be sent), no report yet
        COMMITTED = "committed"  # every instance listed was committed
        PARTIAL = "partial", "partial (failed instances sent again)"
        FAILED = "failed", "failed (the destination refused the request)"
        TIMED_OUT = "timed_out", "timed out (no report after every attempt)"

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="commitments")
    transaction_uid = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.REQUESTED)
    # [[SOP Class UID, SOP Instance UID], ...]: what the request lists, the same at every attempt.
    references = models.JSONField(default=list)
    attempts = models.PositiveIntegerField(default=0, help_text="N-ACTION requests sent.")
    # Due: to send (attempts 0, or the last one was not accepted), or the report overdue (it was accepted).
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_status = models.IntegerField(null=True, blank=True, help_text="The N-ACTION's answer, last attempt.")
    requested_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    committed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [
            # commitments_due: requests waiting whose next attempt (or report deadline) has come
            models.Index(fields=["state", "next_attempt_at"], name="commitment_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.transaction_uid} ({self.delivery_id}): {self.state}"
