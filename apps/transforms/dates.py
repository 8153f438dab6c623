"""Shifting DA and DT values by whole days. Times of day are left alone: a whole-day shift keeps them true.

A value that is not a date we can read is emptied rather than passed on unshifted: a date that slipped
through would undo the shift for that patient.
"""

import datetime
import re

_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(.*)", re.DOTALL)


def shift_da(value: str, days: int) -> str:
    digits = value.strip().replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
    if len(digits) != 8 or not digits.isdigit():
        return ""
    return _shift(digits, days) or ""


def shift_dt(value: str, days: int) -> str:
    """YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]: the date part moves, the rest stays; the precision is kept."""
    match = _DT.fullmatch(value.strip())
    if match is None:
        return ""
    year, month, day, rest = match.groups()
    date = year + (month or "01") + (day or "01")
    shifted = _shift(date, days)
    if shifted is None:
        return ""
    return shifted[: len(year + (month or "") + (day or ""))] + rest


def _shift(yyyymmdd: str, days: int) -> str | None:
    try:
        moved = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8])) + datetime.timedelta(days)
    except (ValueError, OverflowError):
        return None
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"


def shift_value(vr: str, value: str, days: int) -> str:
    return shift_da(value, days) if vr == "DA" else shift_dt(value, days)
