"""The file meta at the head of a Part 10 file (PS3.10 7.1), read from the first bytes of a STOW-RS part.

It says what a C-STORE's command and presentation context say: the SOP class and instance, and the
transfer syntax of the dataset that follows. The group is walked element by element to where the dataset
starts (as pydicom reads it: until the group changes, whatever its group length says).
"""

import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.filereader import read_dataset

from apps.ingest.inspect import LONG_VRS, SHORT_VRS, UID_PATTERN

PREAMBLE = 128
META_START = PREAMBLE + 4  # after "DICM"
# Real file meta takes a few hundred bytes; a part whose head runs longer is not taken for DICOM.
MAX_HEAD = 64 * 1024
UNDEFINED_LENGTH = 0xFFFFFFFF


class NotPart10(Exception):
    """The part does not start as a Part 10 file; the message says why (no PHI)."""


@dataclass(frozen=True)
class FileMeta:
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str


def file_meta(head: bytes | bytearray) -> tuple[FileMeta, int] | None:
    """The file meta of a part that starts with `head`, and where its dataset starts; None while `head` is
    too short to tell. Raises NotPart10."""
    if len(head) < META_START:
        return None
    if head[PREAMBLE:META_START] != b"DICM":
        raise NotPart10("not a DICOM file: no DICM prefix after the preamble")
    pos = META_START
    while True:
        if pos > MAX_HEAD:
            raise NotPart10(f"file meta longer than {MAX_HEAD} bytes")
        if len(head) < pos + 8:
            return None
        if struct.unpack_from("<H", head, pos)[0] != 0x0002:
            break
        vr = bytes(head[pos + 4 : pos + 6]).decode("latin-1")
        if vr in SHORT_VRS:
            pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
        elif vr in LONG_VRS:
            if len(head) < pos + 12:
                return None
            length = struct.unpack_from("<L", head, pos + 8)[0]
            if length == UNDEFINED_LENGTH:
                raise NotPart10("file meta element of undefined length")
            pos += 12 + length
        else:
            raise NotPart10("file meta element with an unknown VR")
    if pos == META_START:
        raise NotPart10("no file meta")
    return _values(bytes(head[META_START:pos])), pos


def _values(raw: bytes) -> FileMeta:
    try:
        meta = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
        return FileMeta(
            transfer_syntax=_uid(meta, "TransferSyntaxUID"),
            sop_class_uid=_uid(meta, "MediaStorageSOPClassUID"),
            sop_instance_uid=_uid(meta, "MediaStorageSOPInstanceUID"),
        )
    except NotPart10:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes means "not understood"
        raise NotPart10(f"cannot parse the file meta: {type(exc).__name__}") from exc


def _uid(meta, keyword: str) -> str:
    # The bytes as sent, as the SCP reads a dataset's UIDs (apps/ingest/inspect.py).
    element = meta.get_item(keyword)
    raw = element.value if element is not None else b""
    value = raw.decode("latin-1").rstrip("\0 ") if isinstance(raw, bytes) else ""
    if not value:
        raise NotPart10(f"file meta without {keyword}")
    if len(value) > 64 or not UID_PATTERN.fullmatch(value):
        raise NotPart10(f"file meta {keyword} is not a valid UID")
    return value
