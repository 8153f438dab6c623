"""A strict first look at a received dataset: can we understand it, and what are its UIDs.

pydicom's read_dataset() is lenient on purpose (a truncated file yields a shorter value and a
warning). At the network edge we want the opposite: a dataset that ends early is refused, so the
sender knows. Pixel data is never decoded here.
"""

import re
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

UNDEFINED_LENGTH = 0xFFFFFFFF
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Unreadable(Exception):
    """The dataset cannot be understood; the message says why (no PHI)."""


@dataclass(frozen=True)
class Identity:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def inspect_dataset(raw: bytes, transfer_syntax: str) -> Identity:
    ts = UID(transfer_syntax)
    elements = {}
    try:
        for elem in data_element_generator(BytesIO(raw), ts.is_implicit_VR, ts.is_little_endian):
            if elem.length != UNDEFINED_LENGTH and len(elem.value or b"") != elem.length:
                raise Unreadable(f"dataset ends inside element {elem.tag}")
            elements[elem.tag] = elem
        ds = Dataset(elements)
        identity = Identity(
            sop_class_uid=_uid(ds, "SOPClassUID"),
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            study_instance_uid=_uid(ds, "StudyInstanceUID"),
            series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        )
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes means "cannot understand"
        raise Unreadable(f"cannot parse dataset: {type(exc).__name__}") from exc
    return identity


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip("\0 ")
    if not value:
        raise Unreadable(f"{keyword} missing")
    if len(value) > 64 or not UID_PATTERN.match(value):
        raise Unreadable(f"{keyword} is not a valid UID")
    return value
