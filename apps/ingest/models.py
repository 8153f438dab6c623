from django.db import models


class AllowedCaller(models.Model):
    """A calling AE title allowed to open associations, optionally only from one host.

    With no enabled row the SCP accepts every caller; with at least one, only the listed ones.
    """

    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=255, blank=True, help_text="IP address; empty allows any host.")
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["ae_title", "host"], name="allowed_caller_unique")]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host or '*'}"
