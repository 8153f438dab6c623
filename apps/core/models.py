"""Abstract models shared by the domain apps. core has no tables of its own."""

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import models

from .timewindows import in_window, parse_weekdays, window_errors


class WeeklyWindow(models.Model):
    """A weekly window in its own timezone. An end at or before the start crosses midnight: the window
    opens on a listed day and closes on the next. An end of 23:59 runs to midnight."""

    weekdays = models.CharField(max_length=64, help_text="Comma-separated: mon,tue,wed,thu,fri,sat,sun")
    start = models.TimeField()
    end = models.TimeField()
    timezone = models.CharField(max_length=64, default="UTC")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.weekdays} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"

    @property
    def weekday_numbers(self) -> frozenset[int]:
        return parse_weekdays(self.weekdays)

    def is_open(self, at: datetime) -> bool:
        return in_window(weekdays=self.weekday_numbers, start=self.start, end=self.end, tz=self.timezone, at=at)

    def clean(self) -> None:
        errors = window_errors(weekdays=self.weekdays, tz=self.timezone)
        if errors:
            raise ValidationError(errors)
