"""The SCP's structural walk of a received dataset: damage at any level of nesting is refused, and every
file dcmtk reads is still accepted."""

import struct
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from apps.ingest.inspect import MAX_DEPTH, Unreadable, check_structure, inspect_dataset

from ..conftest import require_tool
from ..support.dicom import dataset_bytes, shipped
from . import encode, sequence_bytes, uid_element

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the malformed values

CT = dataset_bytes(shipped("ct"))
# CT_small's Other Patient IDs Sequence: a defined-length sequence of two defined-length items.
SEQUENCE = CT.index(b"\x10\x00\x02\x10SQ")
FIRST_ITEM = SEQUENCE + 12
INNER_ELEMENT = FIRST_ITEM + 8  # (0010,0020) LO, 8 bytes


def put(raw: bytes, at: int, data: bytes) -> bytes:
    return raw[:at] + data + raw[at + len(data) :]


def explicit(raw: bytes) -> None:
    check_structure(raw, implicit=False, little=True)


def test_it_accepts_the_shipped_ct():
    explicit(CT)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: put(raw, INNER_ELEMENT + 6, struct.pack("<H", 0x20)), r"ends inside element \(0010,0020\)"),
        (lambda raw: put(raw, INNER_ELEMENT + 4, b"XX"), "unknown VR"),
        (lambda raw: put(raw, FIRST_ITEM, b"\xfe\xff\x00\xe1"), "other than items"),
        (lambda raw: put(raw, FIRST_ITEM + 4, struct.pack("<L", 0x10)), "other than items"),
        (lambda raw: put(raw, SEQUENCE + 8, struct.pack("<L", 0x40)), "ends inside an item"),
        (lambda raw: put(raw, SEQUENCE + 8, b"\xff\xff\xff\xff"), "other than items"),
    ],
    ids=["element-past-its-item", "unknown-vr", "broken-item-tag", "short-item", "short-sequence", "no-delimiter"],
)
def test_damage_inside_a_sequence_is_refused(damage, message):
    """pydicom reads all of these without a word; the SCP stored them before the walk."""
    with pytest.raises(Unreadable, match=message):
        explicit(damage(CT))


@pytest.mark.parametrize("defined", [True, False], ids=["defined", "undefined"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_sequences_are_walked_to_the_depth_limit_and_no_further(defined, implicit):
    nested = sequence_bytes(MAX_DEPTH, defined=defined, closed=True, implicit=implicit, little=True)
    check_structure(nested, implicit=implicit, little=True)
    deeper = sequence_bytes(MAX_DEPTH + 1, defined=defined, closed=True, implicit=implicit, little=True)
    with pytest.raises(Unreadable, match="nested deeper"):
        check_structure(deeper, implicit=implicit, little=True)
    unclosed = sequence_bytes(3, defined=defined, closed=False, implicit=implicit, little=True)
    with pytest.raises(Unreadable):
        check_structure(unclosed, implicit=implicit, little=True)


def test_a_hostile_nesting_costs_no_recursion():
    with pytest.raises(Unreadable, match="nested deeper"):
        explicit(sequence_bytes(5_000, defined=False, closed=True, implicit=False, little=True))


def test_a_file_meta_element_in_the_dataset_is_refused():
    """Stored after our file meta, it would be read as part of it: here, a transfer syntax of the sender's."""
    smuggled = uid_element(0x00020010, "1.2.840.10008.1.2.2", implicit=False, little=True)
    with pytest.raises(Unreadable, match=r"\(0002,0010\) does not belong"):
        inspect_dataset(smuggled + CT, ExplicitVRLittleEndian)


@pytest.mark.parametrize("value", ["1.2.3\n", " 1.2.3", "1.2.3\t", "1.2.3\\4.5", "../../etc/passwd", "1.2.3/../x"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_a_uid_is_judged_on_its_bytes_not_on_pydicoms_tidied_reading(value, implicit):
    ds = dcmread(shipped("ct"))
    before = encode(ds[:0x00080018], implicit=implicit, little=True)
    after = encode(ds[0x00080019:], implicit=implicit, little=True)
    raw = before + uid_element(0x00080018, value, implicit=implicit, little=True) + after
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    with pytest.raises(Unreadable, match="SOPInstanceUID is not a valid UID"):
        inspect_dataset(raw, syntax)


def test_trailing_padding_of_a_uid_is_allowed():
    ds = dcmread(shipped("ct"))
    raw = encode(ds[:0x00080018], implicit=False, little=True)
    raw += uid_element(0x00080018, "1.2.3 ", implicit=False, little=True)
    raw += encode(ds[0x00080019:], implicit=False, little=True)
    assert inspect_dataset(raw, ExplicitVRLittleEndian).sop_instance_uid == "1.2.3"


def test_a_dataset_pydicom_cannot_read_is_refused_though_its_structure_holds():
    """Found by the fuzzer: Specific Character Set with the VR US. Every length still fits, but pydicom
    fails on the whole file (TypeError), so the persist step could never read what we acknowledged."""
    assert CT[:6] == b"\x08\x00\x05\x00CS"
    damaged = put(CT, 4, b"US")
    explicit(damaged)
    with pytest.raises(Unreadable, match="cannot parse dataset"):
        inspect_dataset(damaged, ExplicitVRLittleEndian)


def test_pixel_data_must_be_encapsulated_when_the_syntax_says_so():
    path = shipped("jpeg")
    syntax = UID(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    raw = dataset_bytes(path)
    pixels = raw.index(b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff")
    check_structure(raw, implicit=False, little=True, encapsulated=True)
    defined = put(raw, pixels + 8, struct.pack("<L", len(raw) - pixels - 12))
    with pytest.raises(Unreadable, match="not encapsulated"):
        inspect_dataset(defined[: pixels + 12 + (len(raw) - pixels - 12)], syntax)
    with pytest.raises(Unreadable, match="undefined length"):
        check_structure(raw, implicit=False, little=True, encapsulated=False)


@pytest.mark.integration
def test_it_agrees_with_dcmtk_on_every_file_pydicom_ships():
    """dcmtk's reader is strict about structure by default: whatever it reads, we accept, and the other way."""
    dcmdump = require_tool("dcmdump")
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    disagreements = []
    for path in sorted(folder.glob("*.dcm")):
        try:
            syntax = UID(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            raw = dataset_bytes(path)
        except Exception:  # noqa: BLE001 - no file meta, or not a file pydicom reads: not a C-STORE
            continue
        if syntax.is_deflated or not syntax.is_transfer_syntax:
            continue
        try:
            check_structure(
                raw, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian, encapsulated=syntax.is_encapsulated
            )
            ours = True
        except Unreadable:
            ours = False
        theirs = subprocess.run([dcmdump, "-q", str(path)], capture_output=True, timeout=30).returncode == 0
        if ours != theirs:
            disagreements.append(path.name)
    assert disagreements == []
