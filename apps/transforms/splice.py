"""Reading and writing a header by byte ranges: every element that no step changed is copied from the source
file as the bytes it was read from; only the changed ones are encoded by pydicom.

pydicom's `dcmwrite` encodes every element again, about 7 µs each, so writing a small CT's 260 elements cost
more than sending it, while a profile changes a handful. For a dataset read from a well-formed file the bytes
are those `dcmwrite(..., enforce_file_format=True)` writes (it too writes an untouched element's raw value
as it was read): preamble, file meta, then the elements in tag order, retired group lengths left out.

`read` is `dcmread(fh, stop_before_pixels=True)` and where each element lies in the file. The common file (a
standard transfer syntax, defined lengths at the top level) is read in one pass that builds the same raw
elements pydicom's reader builds, at half its cost; anything else is read by dcmread and laid out after.

An element counts as unchanged when it is still the element read, or when a step decoded it (to read it, or
to set it again) and it still encodes as the value read, padding aside. A top-level sequence that a step
decoded is encoded again whole; its untouched items' elements are raw and pydicom writes them as read.

`part10` returns None whenever it cannot vouch for the result, and the engine then writes with `dcmwrite`: a
transfer syntax that is private or that the body was not encoded in, a changed character set (pydicom then
encodes every element again), command or file meta elements in the dataset, or a source whose elements do not
lie end to end as read (stray bytes, a tag given twice).
"""

import io
import struct
from dataclasses import dataclass
from operator import itemgetter
from typing import BinaryIO

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from .profile import TEXT_VRS

Element = DataElement | RawDataElement
Spans = dict[int, tuple[RawDataElement, int, int]]  # tag -> (the element as read, start, end) in the source

UNDEFINED_LENGTH = 0xFFFFFFFF
PREAMBLE = b"\0" * 128
META_START = len(PREAMBLE) + 4  # after b"DICM"
META_ENCODING = (False, True)  # explicit VR little endian, always (PS3.10 7.1)
GROUP_LENGTH = struct.Struct("<HH2sHL")  # (0002,0000) UL, 4 bytes: the group's length after it
LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
# pydicom's write_string: VR -> the padding to an even length. Other VRs go through its charset encoders.
PLAIN_TEXT_PADDING = {"AE": b" ", "AS": b" ", "CS": b" ", "DA": b" ", "DT": b" ", "TM": b" ", "UI": b"\0"}
IMPLICIT_HEADER = struct.Struct("<HHL")
EXPLICIT_HEADER_LE = struct.Struct("<HH2sH")
EXPLICIT_HEADER_BE = struct.Struct(">HH2sH")
VRS = {str(vr).encode(): str(vr) for vr in VR if len(vr) == 2}
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # where stop_before_pixels stops
ITEM_DELIMITER = 0xFFFEE00D
READ_AHEAD = 1 << 16  # the header of most instances, and the first read
# Version, SOP class and instance, transfer syntax, implementation class (PS3.10 Table 7.1-1, Type 1).
REQUIRED_META = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012)


@dataclass(frozen=True)
class Source:
    """The source file up to Pixel Data, and where each element read from it lies in it."""

    data: bytes
    body: Spans
    meta: Spans | None  # None when the file meta must be written by pydicom

    def read_as(self, tag: int, element: Element | None, *, meta: bool = False) -> bool:
        """Whether `element` is still the raw element read for `tag`, untouched."""
        span = ((self.meta or {}) if meta else self.body).get(tag)
        return span is not None and span[0] is element


def read(fh: BinaryIO) -> tuple[FileDataset, Source | None]:
    """`dcmread(fh, stop_before_pixels=True)`, leaving `fh` where Pixel Data (or the file's end) starts, and
    the source's layout; None for the layout when the elements do not lie end to end as read."""
    fh.seek(0)
    fast = _read_common(fh)
    if fast is not None:
        return fast
    fh.seek(0)
    dataset = dcmread(fh, stop_before_pixels=True)
    end = fh.tell()
    encoding = dataset.original_encoding
    if None in encoding:
        return dataset, None
    fh.seek(0)
    data = fh.read(end)
    fh.seek(end)
    body = _layout(data, dict(dataset.items()), encoding, end)
    if body is None:
        return dataset, None
    meta = _layout(data, dict(dataset.file_meta.items()), META_ENCODING, body[0])
    return dataset, Source(data, body[1], meta[1] if meta and meta[0] == META_START else None)


def part10(dataset: Dataset, source: Source | None) -> bytes | None:
    """Preamble, file meta and dataset as `dcmwrite(..., enforce_file_format=True)` writes them, with the
    unchanged elements copied from `source`; None when that cannot be vouched for."""
    if source is None:
        return None
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    elements = dict(dataset.items())  # as they are: raw elements stay undecoded
    order = sorted(elements, key=int)
    if (
        syntax is None
        or not syntax.is_transfer_syntax
        or syntax.is_private
        or (syntax.is_implicit_VR, syntax.is_little_endian) != dataset.original_encoding
        or dataset.original_character_set != dataset._character_set
        or len(dataset.preamble or PREAMBLE) != len(PREAMBLE)
        or (order and order[0] >> 16 <= 0x0002)  # dcmwrite refuses command and file meta elements here
    ):
        return None
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = META_ENCODING
    out.write((dataset.preamble or PREAMBLE) + b"DICM")
    _write_meta(out, dataset, source)
    out.is_implicit_VR, out.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    charset = dataset.get("SpecificCharacterSet", default_encoding)
    order = [tag for tag in order if tag & 0xFFFF or tag >> 16 <= 6]  # retired group lengths: not written
    _splice(out, dataset, elements, order, source.body, memoryview(source.data), charset)
    return out.getvalue()


def _write_meta(out: DicomBytesIO, dataset: Dataset, source: Source) -> None:
    """As write_file_meta_info(enforce_standard=True): completed, checked, its group length first."""
    meta = dataset.file_meta
    if source.meta is None:
        write_file_meta_info(out, meta, enforce_standard=True)
        return
    if not _complete(meta):
        validate_file_meta(meta, enforce_standard=True)  # adds what dcmwrite adds, raises for what is missing
    group = DicomBytesIO()
    group.is_implicit_VR, group.is_little_endian = META_ENCODING
    elements = dict(meta.items())
    order = sorted((tag for tag in elements if tag != 0x00020000), key=int)
    _splice(group, meta, elements, order, source.meta, memoryview(source.data), default_encoding)
    encoded = group.getvalue()
    out.write(GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, len(encoded)) + encoded)


def _complete(meta: Dataset) -> bool:
    """Nothing for validate_file_meta to add or refuse, seen without decoding the raw elements: required
    ones present and not blank, and an Implementation Version Name."""
    for tag in REQUIRED_META:
        element = meta.get_item(tag, keep_deferred=True)
        if element is None:
            return False
        if not (element.value or b"").strip(b" \0") if element.is_raw else element.is_empty:
            return False
    return 0x00020013 in meta


def _splice(out, dataset: Dataset, elements: dict[int, Element], order: list[int], spans: Spans, data, charset):
    """pydicom's write_dataset for `order`, with unchanged elements copied: a run of them in one write."""
    run_start = run_end = None
    scratch = DicomBytesIO()
    scratch.is_implicit_VR, scratch.is_little_endian = out.is_implicit_VR, out.is_little_endian
    for tag in order:
        element = elements[tag]
        span = spans.get(tag)
        encoded = None
        if span is None or span[0] is not element:
            encoded = encode(scratch, dataset.get_item(tag), charset)
            if span is not None and _same_value(span[0], element, encoded, out.is_implicit_VR):
                encoded = None
        if encoded is not None:
            if run_start is not None:
                out.write(data[run_start:run_end])
                run_start = run_end = None
            out.write(encoded)
        elif span[1] == run_end:
            run_end = span[2]
        else:
            if run_start is not None:
                out.write(data[run_start:run_end])
            run_start, run_end = span[1], span[2]
    if run_start is not None:
        out.write(data[run_start:run_end])


def encode(scratch: DicomBytesIO, element: Element, charset) -> bytes:
    """The element as write_data_element encodes it in `scratch`'s encoding (`scratch` is overwritten)."""
    plain = _encode_plain(element, scratch.is_implicit_VR, scratch.is_little_endian)
    if plain is not None:
        return plain
    scratch.seek(0)
    write_data_element(scratch, element, charset)
    return scratch.getvalue()[: scratch.tell()]


def _encode_plain(element: Element, implicit: bool, little: bool) -> bytes | None:
    """What write_data_element writes for text of the VRs that pydicom's write_string encodes as ISO 8859-1
    whatever the character set, in 1 µs instead of 9 (UIDs, codes, dates and times: most of what
    de-identification rewrites); None for any other element or value, which pydicom encodes."""
    padding = PLAIN_TEXT_PADDING.get(element.VR)
    if padding is None or element.is_raw or element.is_buffered or element.is_undefined_length:
        return None
    value = element.value
    if value is None or isinstance(value, str):
        text = value or ""
    elif isinstance(value, MultiValue | list | tuple) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        return None  # a date or time object, say: pydicom formats it
    try:
        encoded = text.encode("latin-1")
    except UnicodeEncodeError:
        return None  # pydicom raises, and says why
    if len(encoded) % 2:
        encoded += padding
    if len(encoded) > 0xFFFF:
        return None  # pydicom writes it as UN, with a warning
    group, number = element.tag >> 16, element.tag & 0xFFFF
    if implicit:
        return IMPLICIT_HEADER.pack(group, number, len(encoded)) + encoded
    header = EXPLICIT_HEADER_LE if little else EXPLICIT_HEADER_BE
    return header.pack(group, number, element.VR.encode(), len(encoded)) + encoded


def _same_value(original: RawDataElement, element: Element, encoded: bytes, implicit: bool) -> bool:
    """A step decoded the element (to read it, or to set it again) and it still encodes as the value read,
    padding aside: then the source's bytes keep it as it came (its padding, an UN VR). Comparing encodings
    costs nothing: a changed element is encoded anyway, where decoding the original would cost as much."""
    if element.is_raw or element.VR == "SQ":
        return False  # another raw element: a step put it there; a sequence: its items may have changed
    if original.value is None and original.length:
        return False  # a deferred read: nothing to compare with
    read = original.value or b""  # None for an empty value
    value = encoded[12 if not implicit and encoded[4:6] in LONG_VRS else 8 :]
    if element.VR in TEXT_VRS:  # padding, a space or a NUL, is not part of a text value (PS3.5 6.2)
        return value.rstrip(b" \0") == read.rstrip(b" \0")
    return value == read


def _layout(data: bytes, elements: dict[int, Element], encoding: tuple, end: int) -> tuple[int, Spans] | None:
    """(where the first element starts, the raw elements' spans), each element running from its header to
    the next one's; None unless the elements tile the bytes up to `end` exactly as pydicom read them."""
    implicit, little = encoding
    if not elements:
        return end, {}
    long_vrs = () if implicit else EXPLICIT_VR_LENGTH_32
    found = []
    for tag, element in elements.items():
        if isinstance(element, RawDataElement):
            if element.is_implicit_VR != implicit or element.is_little_endian != little:
                return None  # pydicom read a body not in its transfer syntax: a splice would mix the two
            tell = element.value_tell
            start = tell - (12 if element.VR in long_vrs else 8)  # as pydicom's reader decided
            stop = None if element.length == UNDEFINED_LENGTH else tell + element.length
        else:  # decoded while reading (a sequence of undefined length, the character set)
            header = _decoded_header(data, tag, element.file_tell, implicit, "<" if little else ">")
            if header is None:
                return None
            start, stop = header
        found.append((start, stop, tag, element))
    found.sort(key=itemgetter(0))
    delimiter = struct.pack("<HH" if little else ">HH", 0xFFFE, 0xE0DD)
    spans: Spans = {}
    for number, (start, stop, tag, element) in enumerate(found):
        following = found[number + 1][0] if number + 1 < len(found) else end
        if stop is None:  # undefined length: up to the next element, after a sequence delimitation item
            stop = following
            if data[stop - 8 : stop - 4] != delimiter:
                return None
        elif stop != following:
            return None
        if isinstance(element, RawDataElement):
            spans[tag] = (element, start, stop)
    return found[0][0], spans


def _decoded_header(data: bytes, tag: int, tell: int | None, implicit: bool, endian: str) -> tuple | None:
    """(start, end or None for an undefined length) of an element pydicom decoded while reading, from the
    header bytes before its value; None when those are not its header."""
    if tell is None or tell < 8 or tell > len(data):
        return None
    tag_at = struct.Struct(endian + "HH").unpack_from
    group_element = (tag >> 16, tag & 0xFFFF)
    if (
        not implicit
        and tell >= 12
        and tag_at(data, tell - 12) == group_element
        and data[tell - 8 : tell - 6] in LONG_VRS
    ):
        start, length = tell - 12, struct.unpack_from(endian + "L", data, tell - 4)[0]
    elif tag_at(data, tell - 8) == group_element:
        start = tell - 8
        length = struct.unpack_from(endian + ("L" if implicit else "H"), data, tell - (4 if implicit else 2))[0]
    else:
        return None
    return start, None if length == UNDEFINED_LENGTH else tell + length


def _read_common(fh: BinaryIO) -> tuple[FileDataset, Source] | None:
    """What dcmread(fh, stop_before_pixels=True) reads, for the common file: a standard transfer syntax the
    body is encoded in, defined lengths at the top level, each tag once. One pass over the bytes, noting each
    element's span on the way, where pydicom's generator costs twice as much (a read and a tell per element,
    then the layout). None for anything else, which dcmread reads."""
    data = fh.read(READ_AHEAD)
    head = io.BytesIO(data)
    preamble = read_preamble(head, False)  # raises for what dcmread refuses
    meta = _read_file_meta_info(head)
    start = head.tell()
    encoding = _body_encoding(meta.get("TransferSyntaxUID"))
    if encoding is None or start + 8 > len(data):  # no dataset, or file meta longer than the first read
        return None
    parsed = _parse(fh, data, start, *encoding)
    if parsed is None:
        return None
    data, elements, spans, end = parsed
    fh.seek(end)
    # As read_dataset and read_partial build it.
    body = Dataset(elements)
    charset = default_encoding
    if 0x00080005 in elements:
        charset = convert_encodings(convert_raw_data_element(elements[0x00080005]).value)
    body.set_original_encoding(*encoding, charset)
    dataset = FileDataset(fh, body, preamble, meta, *encoding)
    dataset.set_original_encoding(*encoding, body._character_set)
    meta_layout = _layout(data, dict(meta.items()), META_ENCODING, start)
    return dataset, Source(data, spans, meta_layout[1] if meta_layout and meta_layout[0] == META_START else None)


def _body_encoding(syntax: UID | None) -> tuple[bool, bool] | None:
    if syntax is None or not syntax.is_transfer_syntax or syntax.is_private or syntax.is_deflated:
        return None  # read_partial guesses, inflates, or looks the syntax up: dcmread does it
    return syntax.is_implicit_VR, syntax.is_little_endian


def _parse(fh: BinaryIO, data: bytes, pos: int, implicit: bool, little: bool) -> tuple | None:
    """(data, elements, spans, end) of the body from `pos` up to Pixel Data, reading on from `fh` as needed;
    None where pydicom's reader would do something this loop does not (see _read_common)."""
    endian = "<" if little else ">"
    unpack_header = struct.Struct(endian + ("HHL" if implicit else "HH2sH")).unpack_from
    unpack_length = struct.Struct(endian + "L").unpack_from
    # pydicom tells implicit from explicit VR by the first element's VR bytes, and warns on a mismatch.
    first_vr = data[pos + 4 : pos + 6]
    if (b"A" <= first_vr[:1] <= b"Z" and b"A" <= first_vr[1:] <= b"Z") == implicit:
        return None
    elements: dict[BaseTag, RawDataElement] = {}
    spans: Spans = {}
    size, ended = len(data), len(data) < READ_AHEAD
    while True:
        if pos + 12 > size and not ended:
            data, ended = _read_on(fh, data, pos + 12)
            size = len(data)
        if pos + 8 > size:
            if pos < size:
                return None  # a few bytes after the last element: pydicom skips them
            return data, elements, spans, pos
        if implicit:
            group, number, length = unpack_header(data, pos)
            vr, tell = None, pos + 8
        else:
            group, number, vr_bytes, length = unpack_header(data, pos)
            vr, tell = VRS.get(vr_bytes), pos + 8
            if vr is None:
                return None  # an unknown VR, or implicit VR within explicit: pydicom guesses
            if vr in EXPLICIT_VR_LENGTH_32:
                if pos + 12 > size:
                    return None
                length, tell = unpack_length(data, pos + 8)[0], pos + 12
        tag = group << 16 | number
        if tag in PIXEL_TAGS:
            return data, elements, spans, pos
        if group == 0 or length == UNDEFINED_LENGTH or tag == ITEM_DELIMITER or tag in elements:
            return None  # a command set, a sequence to parse, a stray delimiter, a tag given twice
        stop = tell + length
        if stop > size:
            if not ended:
                data, ended = _read_on(fh, data, stop)
                size = len(data)
            if stop > size:
                return None  # truncated
        key = BaseTag(tag)
        element = RawDataElement(
            key, vr, length, data[tell:stop] if length else empty_value_for_VR(vr, raw=True), tell, implicit, little
        )
        elements[key] = element
        spans[key] = (element, pos, stop)
        pos = stop


def _read_on(fh: BinaryIO, data: bytes, needed: int) -> tuple[bytes, bool]:
    """`data` and what follows it in the file, up to `needed` bytes or more; and whether the file ended. The
    buffer at least doubles each time, so a header of many megabytes is copied a few times, not once per
    element."""
    wanted = max(READ_AHEAD, len(data), needed - len(data))
    more = fh.read(wanted)
    return data + more, len(more) < wanted
