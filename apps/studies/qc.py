"""Pure header checks over the instances of one study. A failing check flags; it never drops."""

from collections.abc import Iterable

REQUIRED_ATTRIBUTES = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
)


def check_required(headers: list[dict]) -> dict:
    missing: dict[str, int] = {}
    for header in headers:
        for keyword in REQUIRED_ATTRIBUTES:
            if not header.get(keyword):
                missing[keyword] = missing.get(keyword, 0) + 1
    if missing:
        detail = ", ".join(f"{k} missing in {n}" for k, n in sorted(missing.items()))
        return {"check": "required_attributes", "passed": False, "detail": detail}
    return {"check": "required_attributes", "passed": True, "detail": ""}


def check_one_patient(headers: list[dict]) -> dict:
    """One patient per study: the same PatientID and PatientName on every instance.

    The detail counts distinct patients and never names them: it is shown in logs and lists.
    """
    patients = {(h.get("PatientID", ""), h.get("PatientName", "")) for h in headers}
    if len(patients) > 1:
        return {"check": "one_patient", "passed": False, "detail": f"{len(patients)} distinct patients"}
    return {"check": "one_patient", "passed": True, "detail": ""}


HEADER_CHECKS = (check_required, check_one_patient)


def run_header_checks(headers: Iterable[dict]) -> list[dict]:
    headers = list(headers)
    return [check(headers) for check in HEADER_CHECKS]
