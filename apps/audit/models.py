from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """One human view of (or action on) a study: who, what, which study, from where, when. Append-only."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    study = models.ForeignKey("studies.Study", null=True, on_delete=models.SET_NULL, related_name="+")
    study_instance_uid = models.CharField(max_length=64, blank=True)
    source_address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.TextField(blank=True, help_text="For an action: what was done and why (no patient data).")
    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [
            # an auditor's question: who looked at this study
            models.Index(fields=["study_instance_uid", "occurred_at"], name="audit_study_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} {self.study_instance_uid}"
