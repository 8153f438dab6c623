from django.db import models
from knox.models import AbstractAuthToken


class ApiToken(AbstractAuthToken):
    """An API token (django-rest-knox's, swapped in by KNOX_TOKEN_MODEL) with a name saying what uses it.

    Only a SHA-512 digest of the token is stored (the primary key) and its first 15 characters (token_key,
    to find the candidates); the token itself is shown once, when it is issued. Deleting the row revokes it."""

    name = models.CharField(max_length=100, help_text="What uses this token, e.g. 'RIS status feed'.")

    class Meta:
        verbose_name = "API token"
        ordering = ["user_id", "-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"
