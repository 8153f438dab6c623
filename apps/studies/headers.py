"""Reading the header fields the router needs from a stored DICOM file."""

import hashlib
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

HEADER_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "RequestedProcedurePriority",
    "RequestedProcedureDescription",
    "StudyPriorityID",
    "BitsStored",
    "PixelRepresentation",
)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


# The fields classification reads a study's priority from.
PRIORITY_ATTRIBUTES = ("RequestedProcedurePriority", "StudyPriorityID")
URGENCY_KEYWORDS = (*PRIORITY_ATTRIBUTES, "StudyDescription", "SeriesDescription", "RequestedProcedureDescription")


def whole_seconds(time: str) -> str:
    """A DICOM TM value padded to at least HHMMSS ("0930" -> "093000"), so times of different precision
    compare as text; the old "09:30:00" form loses its colons. Anything else is returned as it is."""
    time = time.strip().replace(":", "")
    digits, dot, fraction = time.partition(".")
    if not digits.isdigit() or len(digits) > 6 or len(digits) % 2:
        return time
    return digits.ljust(6, "0") + dot + fraction


def header_from_dataset(ds: Dataset, keywords: tuple[str, ...] = HEADER_KEYWORDS) -> dict:
    header = {keyword: _text(ds.get(keyword)) for keyword in keywords}
    # Often only inside the Request Attributes Sequence.
    for item in ds.get("RequestAttributesSequence", []) or []:
        for keyword in ("RequestedProcedurePriority", "RequestedProcedureDescription"):
            if keyword in header and not header[keyword]:
                header[keyword] = _text(item.get(keyword))
    return header


def read_header(path: Path) -> tuple[dict, str]:
    """The header fields and the SHA-256 of the whole file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    ds = dcmread(path, stop_before_pixels=True)
    return header_from_dataset(ds), digest.hexdigest()
