"""Issuing API tokens. Revoking one is deleting its row (admin, or the API's logout)."""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from .models import ApiToken


def token_issue(*, user: AbstractBaseUser, name: str, days: int | None = None) -> tuple[ApiToken, str]:
    """A new token for `user`, expiring after `days` (API_TOKEN_DAYS when not given). Returns the row and
    the raw token: the caller shows it once; only its digest is kept."""
    days = settings.API_TOKEN_DAYS if days is None else days
    if days < 1:
        raise ValueError("a token lives at least one day")
    return ApiToken.objects.create(user=user, name=name, expiry=timedelta(days=days))
