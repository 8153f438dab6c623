"""The ledger of retrievals: every C-MOVE and C-GET, and what became of each instance it asked for."""

from django.db import models
from django.utils import timezone


class Retrieval(models.Model):
    class Kind(models.TextChoices):
        MOVE = "move", "C-MOVE"
        GET = "get", "C-GET"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    calling_ae_title = models.CharField(max_length=16)
    peer_address = models.CharField(max_length=64, blank=True)
    # C-MOVE: the destination by the title asked for (its row, while it exists). C-GET: the caller itself.
    destination = models.ForeignKey("routing.Destination", null=True, blank=True, on_delete=models.SET_NULL)
    move_destination = models.CharField(max_length=16, blank=True)
    level = models.CharField(max_length=8)
    # The unique keys asked for (UIDs and patient IDs only: what identifies, never names).
    keys = models.JSONField(default=dict)
    requested = models.PositiveIntegerField(default=0, help_text="Instances that matched (sub-operations).")
    completed = models.PositiveIntegerField(default=0)
    warning = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.BooleanField(default=False)
    status = models.PositiveIntegerField(null=True, blank=True, help_text="The final status answered.")
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        to = self.move_destination or self.calling_ae_title
        return f"{self.get_kind_display()} {self.level} by {self.calling_ae_title} to {to}"


class RetrievalItem(models.Model):
    class Outcome(models.TextChoices):
        COMPLETED = "completed"
        WARNING = "warning"
        FAILED = "failed"

    retrieval = models.ForeignKey(Retrieval, on_delete=models.CASCADE, related_name="items")
    instance = models.ForeignKey("studies.Instance", null=True, on_delete=models.SET_NULL, related_name="+")
    sop_instance_uid = models.CharField(max_length=64)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    status = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    sent_sha256 = models.CharField(max_length=64, blank=True, help_text="Of the bytes sent (after any transform).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["retrieval", "sop_instance_uid"], name="retrieval_item_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.sop_instance_uid}: {self.outcome}"
