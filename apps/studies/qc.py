"""Pure header checks over the instances of one study. A failing check flags or holds; it never drops."""

from collections import defaultdict
from datetime import date

REQUIRED_ATTRIBUTES = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
)
EARLIEST_STUDY_DATE = date(1900, 1, 1)


def _result(check: str, failure: str) -> dict:
    return {"check": check, "passed": not failure, "detail": failure}


def check_required(headers: list[dict]) -> dict:
    missing: dict[str, int] = {}
    for header in headers:
        for keyword in REQUIRED_ATTRIBUTES:
            if not header.get(keyword):
                missing[keyword] = missing.get(keyword, 0) + 1
    return _result("required_attributes", ", ".join(f"{k} missing in {n}" for k, n in sorted(missing.items())))


def check_one_patient(headers: list[dict]) -> dict:
    """One patient per study: the same PatientID and PatientName on every instance. Also what a Study
    Instance UID seen before under another patient looks like, since instances are kept per study.
    The detail counts patients and never names them: it is shown in logs and lists."""
    patients = {(h.get("PatientID", ""), h.get("PatientName", "")) for h in headers}
    return _result("one_patient", f"{len(patients)} distinct patients" if len(patients) > 1 else "")


def check_study_date(headers: list[dict], *, today: date) -> dict:
    """A study date in the future (beyond a day of clock skew) or before 1900 is implausible."""
    bad = set()
    for header in headers:
        raw = header.get("StudyDate", "")
        if not raw:
            continue
        try:
            when = date(int(raw[0:4]), int(raw[4:6]), int(raw[6:8]))
        except ValueError:
            bad.add(f"unreadable {raw!r}")
            continue
        if when < EARLIEST_STUDY_DATE or (when - today).days > 1:
            bad.add(raw)
    return _result("plausible_study_date", ", ".join(sorted(bad)))


def check_series_modality(headers: list[dict]) -> dict:
    by_series: dict[str, set[str]] = defaultdict(set)
    for header in headers:
        by_series[header.get("SeriesInstanceUID", "")].add(header.get("Modality", ""))
    mixed = [modalities for modalities in by_series.values() if len(modalities) > 1]
    return _result("series_modality", f"{len(mixed)} series mix modalities" if mixed else "")


def check_conflicting_copies(conflicts: int) -> dict:
    """The same SOP Instance UID received again with different content: the first copy was kept."""
    return _result("same_uid_different_content", f"{conflicts} later copies differed" if conflicts else "")


def run_header_checks(headers: list[dict], *, today: date, conflicting_copies: int = 0) -> list[dict]:
    headers = list(headers)
    return [
        check_required(headers),
        check_one_patient(headers),
        check_study_date(headers, today=today),
        check_series_modality(headers),
        check_conflicting_copies(conflicting_copies),
    ]
