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

from apps.studies.headers import URGENCY_KEYWORDS, header_from_dataset

UNDEFINED_LENGTH = 0xFFFFFFFF
# The Sequence Delimitation Item tag (FFFE,E0DD) that must close an undefined-length value.
DELIMITERS = (b"\xfe\xff\xdd\xe0", b"\xff\xfe\xe0\xdd")
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Unreadable(Exception):
    """The dataset cannot be understood; the message says why (no PHI)."""


@dataclass(frozen=True)
class Identity:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    # What says how urgent the study is (priority attributes, descriptions), read at receipt so a STAT
    # study takes the STAT lane from its first task. Classification decides the priority of record.
    urgency: tuple[tuple[str, str], ...] = ()


def inspect_dataset(raw: bytes, transfer_syntax: str) -> Identity:
    ts = UID(transfer_syntax)
    elements = {}
    fp = BytesIO(raw)
    end = 0
    try:
        for elem in data_element_generator(fp, ts.is_implicit_VR, ts.is_little_endian):
            # Sequences come back parsed (DataElement); raw elements carry their declared length.
            length = getattr(elem, "length", UNDEFINED_LENGTH)
            if length != UNDEFINED_LENGTH and len(elem.value or b"") != length:
                raise Unreadable(f"dataset ends inside element {elem.tag}")
            if length == UNDEFINED_LENGTH and hasattr(elem, "value_tell"):
                value_end = elem.value_tell + len(elem.value or b"")
                if raw[value_end : value_end + 4] not in DELIMITERS:
                    raise Unreadable(f"element {elem.tag} has no closing delimiter")
            elements[elem.tag] = elem
            end = fp.tell()
        if end != len(raw):
            # The generator stops quietly on a partial element header.
            raise Unreadable("dataset ends inside an element header")
        ds = Dataset(elements)
        identity = Identity(
            sop_class_uid=_uid(ds, "SOPClassUID"),
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            study_instance_uid=_uid(ds, "StudyInstanceUID"),
            series_instance_uid=_uid(ds, "SeriesInstanceUID"),
            urgency=_urgency(ds),
        )
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes means "cannot understand"
        raise Unreadable(f"cannot parse dataset: {type(exc).__name__}") from exc
    return identity


def _urgency(ds: Dataset) -> tuple[tuple[str, str], ...]:
    header = header_from_dataset(ds, URGENCY_KEYWORDS)
    return tuple((keyword, value) for keyword, value in header.items() if value)


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip("\0 ")
    if not value:
        raise Unreadable(f"{keyword} missing")
    if len(value) > 64 or not UID_PATTERN.match(value):
        raise Unreadable(f"{keyword} is not a valid UID")
    return value
