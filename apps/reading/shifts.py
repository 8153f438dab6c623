"""Pure shift arithmetic: is a weekly window open at a given instant, in the window's own timezone."""

import zoneinfo
from datetime import datetime, time

END_OF_DAY = time(23, 59)


def on_shift(*, weekdays: frozenset[int], start: time, end: time, tz: str, at: datetime) -> bool:
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
