"""A strict first look at a received dataset: can we understand it, and what are its UIDs.

pydicom's reader is lenient on purpose (a truncated file yields a shorter value and a warning; a nested
element running past its item is read anyway). At the network edge we want the opposite: the structure
of the whole dataset is walked first, every element at every level of nesting, and a dataset that ends
early, has a length that does not fit its container, an unknown VR, a sequence nested deeper than we
accept or a delimiter out of place is refused, so the sender knows. Pixel data is never decoded here.
"""

import contextlib
import mmap
import os
import re
import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, STANDARD_VR

from apps.studies.headers import HEADER_KEYWORDS, URGENCY_KEYWORDS, header_from_dataset

# bytes, or a memoryview of a mapped file (a dataset streamed to disk)
Buffer = bytes | memoryview
UNDEFINED_LENGTH = 0xFFFFFFFF
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
# Real objects nest a few levels (structured reports a dozen or so); pydicom reads sequences recursively.
MAX_DEPTH = 32

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
NOT_IN_A_DATASET = (0x0000, 0x0002)  # command and file meta groups
SHORT_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_16)
LONG_VRS = frozenset(str(vr) for vr in STANDARD_VR) - SHORT_VRS


IDENTITY_UIDS = {
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
}


class Unreadable(Exception):
    """The dataset cannot be understood; the message says why (no PHI)."""


# Only these are read (pydicom adds Specific Character Set): the persist step reads no others.
HEADER_TAGS = [tag_for_keyword(k) for k in (*HEADER_KEYWORDS, *IDENTITY_UIDS.values(), "RequestAttributesSequence")]


@dataclass(frozen=True)
class Identity:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    # What says how urgent the study is (priority attributes, descriptions), read at receipt so a STAT
    # study takes the STAT lane from its first task. Classification decides the priority of record.
    urgency: tuple[tuple[str, str], ...] = ()


def inspect_dataset(raw: Buffer, transfer_syntax: str) -> Identity:
    """Only element headers, and the elements before the pixel data, are read: the pixel data (most of a
    large instance) is never copied. `raw` may also be a memoryview (of a mapped file, say)."""
    ts = UID(transfer_syntax)
    pixels_at = check_structure(
        raw, implicit=ts.is_implicit_VR, little=ts.is_little_endian, encapsulated=ts.is_encapsulated
    )
    try:
        ds = read_dataset(
            BytesIO(bytes(raw[:pixels_at])), ts.is_implicit_VR, ts.is_little_endian, specific_tags=HEADER_TAGS
        )
        # The UIDs from their bytes as received, before anything reads (and tidies) them.
        uids = {field: _uid(ds, keyword) for field, keyword in IDENTITY_UIDS.items()}
        # What the persist step will read of the stored file: if pydicom cannot, the sender hears it now
        # (a Specific Character Set that is not text, say, makes pydicom fail on the whole file).
        header = header_from_dataset(ds)
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes means "cannot understand"
        raise Unreadable(f"cannot parse dataset: {type(exc).__name__}") from exc
    return Identity(
        **uids, urgency=tuple((keyword, header[keyword]) for keyword in URGENCY_KEYWORDS if header[keyword])
    )


def inspect_file(path: str, transfer_syntax: str) -> tuple[Identity, int]:
    """`inspect_dataset` on the dataset of a Part-10 file as the SCP receives it (preamble and file meta
    written by pynetdicom, then the dataset as it arrived), through a memory map: only the pages holding
    element headers are read. Returns the identity and the dataset's length."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
            raise Unreadable("no file meta before the dataset")
        start = 144 + struct.unpack("<L", head[140:144])[0]
        if size <= start:
            raise Unreadable("no dataset")
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        with memoryview(mapped) as view:
            return inspect_dataset(view[start:], transfer_syntax), size - start
    finally:
        # A view kept alive by an exception's traceback keeps the map too, until it is collected.
        with contextlib.suppress(BufferError):
            mapped.close()


@dataclass
class _Container:
    kind: str  # "dataset", "sequence" (of items) or "fragments" (encapsulated pixel data)
    end: int | None  # None: undefined length, closed by a delimiter
    limit: int  # where the nearest enclosing defined length ends
    implicit: bool
    little: bool
    depth: int


def check_structure(raw: Buffer, *, implicit: bool, little: bool, encapsulated: bool = False) -> int:
    """Walk every element, item and fragment; raise Unreadable at the first thing out of place. Returns
    where the top-level Pixel Data element starts (the length of the dataset when there is none).

    Iterative (a stack of open containers), so a hostile nesting costs no recursion. It checks structure
    only: tags, VRs, lengths, items and delimiters. Values are neither converted nor read.
    """
    stack = [_Container("dataset", len(raw), len(raw), implicit, little, 0)]
    pos = 0
    pixels_at = len(raw)
    while stack:
        box = stack[-1]
        if box.end is not None and pos == box.end:
            stack.pop()
            continue
        if box.kind == "dataset":
            top_level = len(stack) == 1
            first_pixels = top_level and pixels_at == len(raw) and pos + 4 <= len(raw)
            if first_pixels and _tag_at(raw, pos, box.little) == PIXEL_DATA:
                pixels_at = pos
            pos = _dataset_element(raw, pos, box, stack, top_level=top_level, encapsulated=encapsulated)
        else:
            pos = _item(raw, pos, box, stack)
    return pixels_at


_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_UL = {True: struct.Struct("<L"), False: struct.Struct(">L")}
_US = {True: struct.Struct("<H"), False: struct.Struct(">H")}


def _tag_at(raw: Buffer, pos: int, little: bool) -> int:
    group, element = _TAG[little].unpack_from(raw, pos)
    return group << 16 | element


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _need(pos: int, size: int, box: _Container, where: str) -> None:
    if pos + size > box.limit:
        raise Unreadable(f"dataset ends inside {where}")


def _dataset_element(
    raw: Buffer, pos: int, box: _Container, stack: list[_Container], *, top_level: bool, encapsulated: bool
) -> int:
    little = box.little
    _need(pos, 8, box, "an element header")
    tag = _tag_at(raw, pos, little)
    if tag >> 16 == 0xFFFE:
        if tag == ITEM_DELIMITER and box.end is None and _UL[little].unpack_from(raw, pos + 4)[0] == 0:
            stack.pop()  # the end of an undefined-length item
            return pos + 8
        raise Unreadable(f"unexpected delimiter or item tag {_name(tag)}")
    if top_level and tag >> 16 in NOT_IN_A_DATASET:
        # Stored after our file meta, a (0002,xxxx) element would be read as part of it: a sender could
        # change the stored file's transfer syntax (pydicom reads group 0002 until another group starts).
        raise Unreadable(f"element {_name(tag)} does not belong in a dataset")
    if box.implicit:
        vr, length, start = _dictionary_vr(tag), _UL[little].unpack_from(raw, pos + 4)[0], pos + 8
    else:
        vr = bytes(raw[pos + 4 : pos + 6]).decode("latin-1")
        if vr in SHORT_VRS:
            length, start = _US[little].unpack_from(raw, pos + 6)[0], pos + 8
        elif vr in LONG_VRS:
            _need(pos, 12, box, "an element header")
            length, start = _UL[little].unpack_from(raw, pos + 8)[0], pos + 12
        else:
            raise Unreadable(f"element {_name(tag)} has an unknown VR")
    if length == UNDEFINED_LENGTH:
        if vr == "SQ" or (box.implicit and vr in ("", "UN")):
            # A sequence; one of an unknown VR in implicit VR is read as one (PS3.5 7.5.1).
            stack.append(_sequence(box, None, box.implicit, little))
        elif vr == "UN":
            # Explicit UN of undefined length: a sequence encoded in Implicit VR Little Endian (PS3.5 6.2.2).
            stack.append(_sequence(box, None, True, True))
        elif encapsulated and tag == PIXEL_DATA and vr in ("OB", "OW"):
            stack.append(_Container("fragments", None, box.limit, box.implicit, little, box.depth))
        else:
            raise Unreadable(f"element {_name(tag)} has an undefined length")
        return start
    if start + length > box.limit:
        raise Unreadable(f"dataset ends inside element {_name(tag)}")
    if top_level and encapsulated and tag == PIXEL_DATA:
        raise Unreadable("pixel data is not encapsulated")  # as the transfer syntax says it is
    if vr == "SQ":
        stack.append(_sequence(box, start + length, box.implicit, little))
        return start
    return start + length


def _sequence(parent: _Container, end: int | None, implicit: bool, little: bool) -> _Container:
    depth = parent.depth + 1
    if depth > MAX_DEPTH:
        raise Unreadable(f"sequences nested deeper than {MAX_DEPTH}")
    limit = parent.limit if end is None else end
    return _Container("sequence", end, limit, implicit, little, depth)


def _item(raw: Buffer, pos: int, box: _Container, stack: list[_Container]) -> int:
    """The next item of a sequence (a dataset) or of encapsulated pixel data (a fragment)."""
    _need(pos, 8, box, "an item header")
    tag, length = _tag_at(raw, pos, box.little), _UL[box.little].unpack_from(raw, pos + 4)[0]
    if tag == SEQUENCE_DELIMITER and box.end is None and length == 0:
        stack.pop()
        return pos + 8
    if tag != ITEM:
        raise Unreadable("a sequence holds something other than items")
    start = pos + 8
    if length == UNDEFINED_LENGTH and box.kind == "sequence":
        stack.append(_Container("dataset", None, box.limit, box.implicit, box.little, box.depth))
        return start
    if length == UNDEFINED_LENGTH or start + length > box.limit:
        raise Unreadable("dataset ends inside an item")
    if box.kind == "sequence":
        stack.append(_Container("dataset", start + length, start + length, box.implicit, box.little, box.depth))
        return start
    return start + length  # a fragment: bytes we do not look into


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""  # private or unknown: its VR is not known in implicit VR


def _uid(ds: Dataset, keyword: str) -> str:
    # The bytes as received, not pydicom's reading of them (which also strips "\n" and other whitespace):
    # we record this UID, and destinations will read the same bytes their own way.
    element = ds.get_item(keyword)
    raw = element.value if element is not None else b""
    # Not bytes: a value pydicom has already read (a sequence, for one), so not a UID either.
    value = raw.decode("latin-1").rstrip("\0 ") if isinstance(raw, bytes) else str(raw or "")
    if not value:
        raise Unreadable(f"{keyword} missing")
    if len(value) > 64 or not UID_PATTERN.fullmatch(value):
        raise Unreadable(f"{keyword} is not a valid UID")
    return value
