from django.db import models
from django.utils import timezone


class Heartbeat(models.Model):
    """The last sign of life of one process (an SCP, a worker), for /healthz."""

    role = models.CharField(max_length=16)
    name = models.CharField(max_length=255)
    last_seen = models.DateTimeField(default=timezone.now)
    counters = models.JSONField(
        default=dict, blank=True, help_text="Counts the process keeps since it started (an SCP: refusals by reason)."
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["role", "name"], name="heartbeat_unique")]

    def __str__(self) -> str:
        return f"{self.role} {self.name} at {self.last_seen:%H:%M:%S}"
