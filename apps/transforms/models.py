"""Transform profiles as data: what a destination receives instead of the original bytes (docs/transforms.md).

A profile's secret is never stored here: `secret` names where it is (an environment variable or a file), read
when an instance is transformed. Exports carry the reference, never the secret.
"""

from django.core.exceptions import ValidationError
from django.db import models

from apps.core import secret_refs

from . import engine

MIN_SECRET_BYTES = engine.MIN_SECRET_BYTES


class SecretUnavailable(Exception):
    """The profile's secret cannot be read: the instance is held (never sent unmasked)."""


class TransformProfile(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=255, blank=True)
    deidentify = models.BooleanField(
        default=False, help_text="PS3.15 Annex E Basic Application Level Confidentiality Profile."
    )
    options = models.JSONField(
        default=list, blank=True, help_text=f"Annex E options: {', '.join(sorted(engine.OPTIONS))}."
    )
    allow_burned_in = models.BooleanField(
        default=False,
        help_text="Send instances whose pixels may carry burned-in text (BurnedInAnnotation YES, secondary "
        "capture, ultrasound). Pixels are never cleaned: leave off for de-identification.",
    )
    operations = models.JSONField(
        default=list, blank=True, help_text="Coercion steps in order: [{op, tag, value, pattern, keep_creators}]."
    )
    secret = models.CharField(
        max_length=255,
        blank=True,
        help_text="Where the secret is: env:VARIABLE or file:/path (16 bytes or more). Needed for pseudonyms, "
        "UIDs, hashes and date shifts; never stored here.",
    )
    use_pseudonym_table = models.BooleanField(
        default=False,
        help_text="Patients get the pseudonym of their row in this profile's table; a patient without one is "
        "held for the destination, never sent unmasked.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def operations_parsed(self) -> tuple[engine.Operation, ...]:
        return tuple(
            engine.Operation(
                op=str(o.get("op", "")),
                tag=str(o.get("tag", "")),
                value=str(o.get("value", "")),
                pattern=str(o.get("pattern", "")),
                keep_creators=tuple(str(c) for c in o.get("keep_creators", ())),
            )
            for o in self.operations
        )

    def engine_profile(self, pseudonyms: dict[str, str] | None = None) -> engine.Profile:
        return engine.Profile(
            name=self.name,
            operations=self.operations_parsed(),
            deidentify=self.deidentify,
            options=frozenset(self.options),
            allow_burned_in=self.allow_burned_in,
            pseudonyms=pseudonyms,
        )

    def clean(self) -> None:
        if not isinstance(self.operations, list) or not all(isinstance(o, dict) for o in self.operations):
            raise ValidationError({"operations": "A list of mappings: [{op, tag, value, pattern, keep_creators}]."})
        unknown = {k for o in self.operations for k in o} - {"op", "tag", "value", "pattern", "keep_creators"}
        if unknown:
            raise ValidationError({"operations": f"unknown key(s) {', '.join(sorted(unknown))}"})
        if not isinstance(self.options, list):
            raise ValidationError({"options": "A list of option names."})
        table = {} if self.use_pseudonym_table else None
        if errors := engine.validate(self.engine_profile(table)):
            raise ValidationError({"operations": errors})
        if self.secret and not secret_refs.is_reference(self.secret):
            raise ValidationError({"secret": "env:VARIABLE or file:/path"})

    def secret_bytes(self) -> bytes:
        """The secret, read now from where `secret` says (apps/core/secret_refs.py). Raises SecretUnavailable."""
        if not self.secret:
            return b""
        try:
            value = secret_refs.read(self.secret)
        except secret_refs.SecretUnavailable as exc:
            value, why = b"", f": {exc}"
        else:
            why = ""
        if len(value) < MIN_SECRET_BYTES:
            raise SecretUnavailable(
                f"the secret of profile {self.name} ({self.secret}) is missing or shorter than "
                f"{MIN_SECRET_BYTES} bytes{why}"
            )
        return value


class PseudonymEntry(models.Model):
    """A row of a profile's pseudonym table (imported as data: `manage.py importpseudonyms`)."""

    profile = models.ForeignKey(TransformProfile, on_delete=models.CASCADE, related_name="pseudonyms")
    patient_id = models.CharField(max_length=64)
    pseudonym = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["profile", "patient_id"], name="pseudonym_unique_patient"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id}: {self.pseudonym}"
