from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from apps.core import secret_refs


class WebhookEndpoint(models.Model):
    """An HTTP endpoint that receives events as JSON, signed with HMAC-SHA256 of the body."""

    name = models.SlugField(max_length=64, unique=True)
    url = models.URLField(max_length=500)
    secret = models.CharField(
        max_length=255,
        help_text="Where the shared secret of the X-Router-Signature header is: env:VARIABLE or file:/path "
        "(read when a message is signed; never the secret itself).",
    )
    events = models.CharField(max_length=500, blank=True, help_text="Comma-separated events; empty: every event.")
    enabled = models.BooleanField(default=True)
    phi_approved = models.BooleanField(
        default=False, help_text="Only an approved endpoint receives patient names; others get ids only."
    )

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not secret_refs.is_reference(self.secret):
            raise ValidationError({"secret": "env:VARIABLE or file:/path, never the secret itself"})

    def wants(self, event: str) -> bool:
        wanted = {e.strip() for e in self.events.split(",") if e.strip()}
        return self.enabled and (not wanted or event in wanted)


class Notification(models.Model):
    """One message for one (event, subject, recipient, channel): created once, sent until it succeeds."""

    class Channel(models.TextChoices):
        IN_APP = "in_app"
        EMAIL = "email"
        WEBHOOK = "webhook"

    class State(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    event = models.CharField(max_length=64)
    # What the event is about, as "kind:id" (e.g. "assignment:12"): ids only, never names.
    subject_key = models.CharField(max_length=64)
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    channel = models.CharField(max_length=16, choices=Channel.choices)
    title = models.CharField(max_length=255)
    body = models.TextField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event", "subject_key", "recipient", "channel"], name="notification_once")
        ]
        indexes = [
            # notifications_due: pending messages whose next attempt has come
            models.Index(fields=["state", "next_attempt_at"], name="notification_due_idx"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.event} {self.subject_key} -> {self.recipient_id or self.endpoint_id} ({self.channel}): {self.state}"
        )
