"""The one clock. Services take `now` as a keyword so tests can pass their own."""

from datetime import datetime

from django.utils import timezone


def now() -> datetime:
    return timezone.now()
