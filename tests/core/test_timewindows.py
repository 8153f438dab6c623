from datetime import UTC, datetime, time

import pytest

from apps.core.timewindows import in_window

WEEKDAYS = frozenset(range(5))  # mon-fri
EVERY_DAY = frozenset(range(7))


def at(text):
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-11-23T08:00:00", True),  # Monday, start is inclusive
        ("2026-11-23T16:59:59", True),
        ("2026-11-23T17:00:00", False),  # end is exclusive
        ("2026-11-22T10:00:00", False),  # Sunday
    ],
)
def test_a_day_shift(moment, expected):
    assert in_window(weekdays=WEEKDAYS, start=time(8), end=time(17), tz="UTC", at=at(moment)) is expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-11-23T23:00:00", True),  # Monday night
        ("2026-11-24T06:59:00", True),  # Tuesday morning belongs to Monday's shift
        ("2026-11-24T07:00:00", False),
        ("2026-11-23T06:00:00", False),  # Monday morning: Sunday had no shift
        ("2026-11-28T02:00:00", True),  # Saturday morning: Friday night's shift
        ("2026-11-29T02:00:00", False),  # Sunday morning: Saturday had no shift
    ],
)
def test_an_overnight_shift_crosses_midnight(moment, expected):
    assert in_window(weekdays=WEEKDAYS, start=time(19), end=time(7), tz="UTC", at=at(moment)) is expected


def test_a_shift_is_read_in_its_own_timezone():
    # 19:00-07:00 in New York; 23:30 UTC on Monday is 18:30 in New York (EST, UTC-5): not yet.
    kwargs = {"weekdays": WEEKDAYS, "start": time(19), "end": time(7), "tz": "America/New_York"}
    assert not in_window(**kwargs, at=at("2026-11-23T23:30:00"))
    assert in_window(**kwargs, at=at("2026-11-24T00:30:00"))
    assert in_window(**kwargs, at=at("2026-11-24T11:59:00"))  # 06:59 in New York on Tuesday
    assert not in_window(**kwargs, at=at("2026-11-24T12:00:00"))


def test_across_the_dst_change_the_local_window_holds():
    kwargs = {"weekdays": EVERY_DAY, "start": time(19), "end": time(7), "tz": "America/New_York"}
    # 2026-11-01: clocks fall back at 02:00 EDT. 06:30 local is 11:30 UTC after the change (EST)...
    assert in_window(**kwargs, at=at("2026-11-01T11:30:00"))
    # ...and 07:30 local (12:30 UTC) is past the end, though it would have been 06:30 the day before.
    assert not in_window(**kwargs, at=at("2026-11-01T12:30:00"))
    # 2026-03-08: clocks spring forward; 06:30 EDT is 10:30 UTC.
    assert in_window(**kwargs, at=at("2026-03-08T10:30:00"))
    assert not in_window(**kwargs, at=at("2026-03-08T11:30:00"))


def test_an_end_of_2359_runs_to_midnight():
    kwargs = {"weekdays": EVERY_DAY, "start": time(0), "end": time(23, 59), "tz": "UTC"}
    assert in_window(**kwargs, at=at("2026-11-23T23:59:30"))
    assert in_window(**kwargs, at=at("2026-11-23T00:00:00"))
