from django.core.exceptions import ValidationError
from django.db import models


class AllowedCaller(models.Model):
    """A calling AE title allowed to open associations, optionally only from one host.

    With no enabled row the SCP accepts every caller; with at least one, only the listed ones. A caller may
    have to come over TLS, and to present a client certificate: issued by a given CA, with a given subject
    or SHA-256 fingerprint (docs/security.md). One that does not is refused as an unknown calling AE title.
    """

    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=255, blank=True, help_text="IP address; empty allows any host.")
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=255, blank=True)
    tls_required = models.BooleanField(default=False, help_text="Only over the TLS port (SCP_TLS_PORT).")
    client_ca_file = models.CharField(
        max_length=500,
        blank=True,
        help_text="Path of a PEM file on the SCP host: the caller must present a certificate this CA issued. "
        "Implies TLS. The CA must also be in SCP_TLS_CA, which the TLS listener trusts.",
    )
    client_subject = models.CharField(
        max_length=500,
        blank=True,
        help_text="The client certificate's subject (RFC 4514, e.g. CN=ct1,O=Hospital) or its common name alone.",
    )
    client_sha256 = models.CharField(
        max_length=95, blank=True, help_text="The client certificate's SHA-256 fingerprint (hex, colons allowed)."
    )
    may_query = models.BooleanField(
        default=False, help_text="May search the studies the router holds (C-FIND). Nobody may unless allowed here."
    )
    may_retrieve = models.BooleanField(
        default=False, help_text="May have held studies sent (C-MOVE to a known destination, C-GET to itself)."
    )
    max_associations = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="With a host: the associations that host may hold at once (empty: SCP_MAX_ASSOCIATIONS_PER_ADDRESS).",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["ae_title", "host"], name="allowed_caller_unique")]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host or '*'}"

    def clean(self) -> None:
        digits = self.client_sha256.replace(":", "").replace(" ", "")
        if digits and (len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits)):
            raise ValidationError({"client_sha256": "A SHA-256 fingerprint is 64 hexadecimal digits."})
