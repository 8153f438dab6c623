from django.conf import settings
from django.db import models
from django.utils import timezone


class ConfigVersion(models.Model):
    """The whole configuration document after one change: who made it, when, from where. Append-only; the
    number (the primary key) is what `importconfig --version N` and the admin's *Restore* take back."""

    class Source(models.TextChoices):
        ADMIN = "admin", "admin"
        IMPORT = "import", "import"
        ROLLBACK = "rollback", "rollback"
        BASELINE = "baseline", "baseline (what was there before the first recorded change)"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author = models.CharField(max_length=150, help_text="The account, or the system user who ran the command.")
    source = models.CharField(max_length=16, choices=Source.choices)
    summary = models.TextField(blank=True, help_text="What changed from the version before.")
    document = models.TextField(help_text="The whole configuration document after the change (no secrets).")
    restored_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"version {self.pk} by {self.author} ({self.source}) at {self.created_at:%Y-%m-%d %H:%M:%S}"
