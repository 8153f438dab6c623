"""Weekly time windows in their own timezone (shifts, rule windows, delivery windows): pure functions."""

import zoneinfo
from datetime import datetime, time

END_OF_DAY = time(23, 59)


def in_window(*, weekdays: frozenset[int], start: time, end: time, tz: str, at: datetime) -> bool:
    """True when `at` falls in the window.

    Weekdays are Monday=0. A window whose end is at or before its start crosses midnight: it opens on
    a listed day and closes on the following day. 23:59 as an end means the end of the day.
    """
    local = at.astimezone(zoneinfo.ZoneInfo(tz))
    now = local.time().replace(tzinfo=None)
    today = local.weekday()
    yesterday = (today - 1) % 7
    if end == END_OF_DAY:
        return today in weekdays and now >= start
    if start < end:
        return today in weekdays and start <= now < end
    return (today in weekdays and now >= start) or (yesterday in weekdays and now < end)


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_weekdays(text: str) -> frozenset[int]:
    return frozenset(WEEKDAYS.index(d.strip().lower()) for d in text.split(",") if d.strip())


def window_errors(*, weekdays: str, tz: str) -> dict[str, str]:
    """What is wrong with a window's weekdays and timezone, by field (empty when nothing is)."""
    errors = {}
    days = [d.strip().lower() for d in weekdays.split(",") if d.strip()]
    unknown = [d for d in days if d not in WEEKDAYS]
    if not days or unknown:
        errors["weekdays"] = f"Use {', '.join(WEEKDAYS)}; got {', '.join(unknown) or 'none'}."
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        errors["timezone"] = f"Unknown timezone {tz!r}."
    return errors
