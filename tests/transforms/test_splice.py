"""The splice writer (apps/transforms/splice.py): what it writes is what pydicom's dcmwrite writes for the same
transformed dataset, with the elements no step changed copied from the source; where it cannot vouch for
that, pydicom writes the file."""

import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from apps.transforms import splice
from apps.transforms.engine import Operation, Profile, transform

from ..support.dicom import shipped
from .conftest import SECRET, dcmdump_problems, item
from .test_files import SOURCES

PROFILES = {
    "nothing": Profile("nothing"),
    "site": Profile(
        "site",
        operations=(
            Operation("prefix", "AccessionNumber", "NE-"),
            Operation("set", "InstitutionName", "North East Imaging"),
        ),
    ),
    "in a sequence": Profile(
        "seq", operations=(Operation("prefix", "RequestAttributesSequence[*].AccessionNumber", "N-"),)
    ),
    "remove_private": Profile("pruned", operations=(Operation("remove_private"),)),
    "research": Profile(
        "research", deidentify=True, allow_burned_in=True, options=frozenset({"retain_longitudinal_modified_dates"})
    ),
}
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian, "big endian": ExplicitVRBigEndian}
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@pytest.fixture
def spliced(monkeypatch) -> list[bool]:
    """For each transform, whether the splice writer wrote the header (False: pydicom did)."""
    made = []
    part10 = splice.part10

    def spy(dataset, source):
        encoded = part10(dataset, source)
        made.append(encoded is not None)
        return encoded

    monkeypatch.setattr(splice, "part10", spy)
    return made


def by_pydicom(monkeypatch, source: Path, target: Path, profile: Profile) -> bytes:
    """The file the engine writes with dcmwrite alone."""
    with monkeypatch.context() as patch:
        patch.setattr(splice, "part10", lambda dataset, source: None)
        transform(source, target, profile, SECRET)
    return target.read_bytes()


def tricky(folder: Path, identified: Path, syntax: str) -> Path:
    """`identified` in `syntax`, with sequences and items of undefined length (one nested in an item), a
    private block, and an odd-length value left unpadded, as some writers leave them."""
    ds = dcmread(identified)
    referenced = ds.ReferencedImageSequence[0]
    ds.RequestAttributesSequence[0].ReferencedStudySequence = Sequence(
        [item(ReferencedSOPClassUID=referenced.ReferencedSOPClassUID, ReferencedSOPInstanceUID="1.2.3.4")]
    )
    nested = ds.RequestAttributesSequence[0]["ReferencedStudySequence"]
    for sequence in (ds["RequestAttributesSequence"], ds["OtherPatientIDsSequence"], nested):
        sequence.is_undefined_length = True
        for each in sequence.value:
            each.is_undefined_length_sequence_item = True
    ds.file_meta.TransferSyntaxUID = SYNTAXES[syntax]
    path = folder / f"tricky-{syntax.replace(' ', '-')}.dcm"
    dcmwrite(path, ds, enforce_file_format=True)  # save_as refuses to change the endianness
    # pydicom pads what it encodes: the odd length goes in as a raw value, written as it is.
    ds = dcmread(path)
    implicit, little = ds.original_encoding
    ds[0x00081030] = RawDataElement(Tag(0x00081030), None if implicit else "LO", 7, b"CT HEAD", 0, implicit, little)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", SOURCES)
def test_it_reads_what_dcmread_reads(name):
    with open(shipped(name), "rb") as fh:
        expected = dcmread(fh, stop_before_pixels=True)
        pixel_data = fh.tell()
        fh.seek(0)
        dataset, source = splice.read(fh)
        assert fh.tell() == pixel_data
    assert source is not None
    assert dict(dataset.items()) == dict(expected.items())  # raw elements as pydicom reads them
    assert dict(dataset.file_meta.items()) == dict(expected.file_meta.items())
    assert dataset.preamble == expected.preamble
    assert dataset.original_encoding == expected.original_encoding
    assert dataset.original_character_set == expected.original_character_set


# Every source but the two with sequences of undefined length at the top level.
DEFINED_LENGTHS = [name for name in SOURCES if name not in ("jpeg_lossless", "jpeg2000")]


@pytest.mark.parametrize("name", DEFINED_LENGTHS)
def test_a_file_with_defined_lengths_is_read_in_one_pass_without_dcmread(monkeypatch, name):
    def dcmread_not_expected(*args, **kwargs):
        raise AssertionError("dcmread called")

    monkeypatch.setattr(splice, "dcmread", dcmread_not_expected)
    with open(shipped(name), "rb") as fh:
        splice.read(fh)


PLAIN_TEXT = [
    ("UI", "1.2.840.10008.1.2.1"),
    ("UI", "1.2.3"),
    ("CS", "ORIGINAL\\PRIMARY"),
    ("CS", ["ORIGINAL", "PRIMARY", "AXIAL"]),
    ("CS", ["", ""]),
    ("CS", None),
    ("DA", "20240601"),
    ("DA", ""),
    ("DT", "20240601101500.123+0100"),
    ("TM", "101500.12"),
    ("AS", "063Y"),
    ("AE", "STORESCP"),
    ("SH", "NE-A-1"),  # pydicom's own text encoder: not the plain path
    ("US", 1),
]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize(("vr", "value"), PLAIN_TEXT)
def test_an_element_is_encoded_as_write_data_element_encodes_it(syntax, vr, value):
    element = DataElement(0x00091010, vr, value)
    implicit, little = SYNTAXES[syntax].is_implicit_VR, SYNTAXES[syntax].is_little_endian
    scratch, expected = DicomBytesIO(), DicomBytesIO()
    for buffer in (scratch, expected):
        buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_data_element(expected, element, ["iso8859"])
    assert splice.encode(scratch, element, ["iso8859"]) == expected.getvalue()
    assert (splice._encode_plain(element, implicit, little) is None) == (vr in ("SH", "US"))


def test_a_header_of_megabytes_is_read_in_one_pass_and_spliced(tmp_path, monkeypatch, ct, spliced):
    ds = dcmread(ct)
    block = ds.private_block(0x0011, "BIG VENDOR", create=True)
    for number in range(0x10, 0xF0):  # many elements after the first read, and one larger than it
        block.add_new(number, "OB", bytes([number]) * (20_000 if number != 0x20 else 3_000_000))
    source = tmp_path / "big-header.dcm"
    ds.save_as(source, enforce_file_format=True)
    monkeypatch.setattr(splice, "dcmread", None)  # the one-pass reader, or a TypeError
    target = tmp_path / "out.dcm"
    transform(source, target, PROFILES["site"], SECRET)
    monkeypatch.undo()
    assert spliced == [True]
    assert dcmread(target)[0x00111120].value == b"\x20" * 3_000_000
    assert target.read_bytes() == by_pydicom(monkeypatch, source, tmp_path / "pydicom.dcm", PROFILES["site"])


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("profile", ["nothing", "site", "research"])
def test_it_writes_what_pydicom_writes_for_every_encoding(tmp_path, monkeypatch, spliced, name, profile):
    source = shipped(name)
    transform(source, tmp_path / "spliced.dcm", PROFILES[profile], SECRET)
    assert spliced == [True]
    assert (tmp_path / "spliced.dcm").read_bytes() == by_pydicom(
        monkeypatch, source, tmp_path / "pydicom.dcm", PROFILES[profile]
    )


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("profile", PROFILES)
def test_undefined_lengths_private_blocks_and_odd_lengths_come_out_as_pydicom_writes_them(
    tmp_path, monkeypatch, spliced, identified, syntax, profile
):
    source = tricky(tmp_path, identified, syntax)
    target = tmp_path / "spliced.dcm"
    transform(source, target, PROFILES[profile], SECRET)
    assert spliced == [True]
    assert target.read_bytes() == by_pydicom(monkeypatch, source, tmp_path / "pydicom.dcm", PROFILES[profile])
    assert dcmdump_problems(target) <= dcmdump_problems(source)
    assert dcmread(target).SOPClassUID == dcmread(source).SOPClassUID


def test_an_untouched_sequence_of_undefined_length_is_copied_byte_for_byte(tmp_path, identified):
    source = tricky(tmp_path, identified, "explicit")
    target = tmp_path / "out.dcm"
    transform(source, target, PROFILES["site"], SECRET)
    data = source.read_bytes()
    start = data.index(b"\x10\x00\x02\x10SQ\x00\x00\xff\xff\xff\xff")  # (0010,1002) OtherPatientIDsSequence
    sequence = data[start : data.index(SEQUENCE_DELIMITER, start) + len(SEQUENCE_DELIMITER)]
    assert sequence in target.read_bytes()
    assert dcmread(target).AccessionNumber == "NE-A-20240601-7"


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_a_change_inside_a_nested_sequence_keeps_the_undefined_lengths(tmp_path, identified, syntax):
    source = tricky(tmp_path, identified, syntax)
    target = tmp_path / "out.dcm"
    profile = Profile(
        "seq",
        operations=(
            Operation("hash", "RequestAttributesSequence[*].ReferencedStudySequence[*].ReferencedSOPInstanceUID"),
        ),
    )
    transform(source, target, profile, SECRET)
    ds = dcmread(target)
    request = ds["RequestAttributesSequence"]
    nested = request.value[0]["ReferencedStudySequence"]
    assert request.is_undefined_length and nested.is_undefined_length
    assert nested.value[0].ReferencedSOPInstanceUID not in ("", "1.2.3.4")
    assert request.value[0].AccessionNumber == "A-20240601-7"
    assert ds.OtherPatientIDsSequence[0].PatientID == "MRN-OTHER"


def test_remove_private_takes_the_private_block_out_of_the_copy(tmp_path, identified):
    source = tricky(tmp_path, identified, "explicit")
    target = tmp_path / "out.dcm"
    transform(source, target, PROFILES["remove_private"], SECRET)
    assert b"ACME 1.0" in source.read_bytes() and b"ACME 1.0" not in target.read_bytes()
    assert not [element for element in dcmread(target) if element.tag.is_private]


def test_an_odd_length_value_is_copied_and_a_changed_one_padded(tmp_path, identified):
    source = tricky(tmp_path, identified, "explicit")
    target = tmp_path / "out.dcm"
    transform(source, target, PROFILES["site"], SECRET)
    data = target.read_bytes()
    assert b"\x08\x00\x30\x10LO\x07\x00CT HEAD" in data  # (0008,1030) as it came
    assert b"\x08\x00\x50\x00SH\x10\x00NE-A-20240601-7 " in data  # 15 characters, padded to 16


def test_an_element_read_and_set_to_the_same_value_keeps_its_source_bytes(tmp_path, ct):
    source = tmp_path / "padded.dcm"
    data = ct.read_bytes()
    station = data.index(b"\x08\x00\x10\x10SH")  # (0008,1010) StationName
    length = struct.unpack_from("<H", data, station + 6)[0]
    value = data[station + 8 : station + 8 + length]
    padded = value.rstrip(b" ").ljust(length, b"\0")  # NUL instead of space: pydicom would pad with a space
    source.write_bytes(data[: station + 8] + padded + data[station + 8 + length :])
    profile = Profile("same", operations=(Operation("set", "StationName", "{StationName}"),))
    transform(source, tmp_path / "out.dcm", profile, SECRET)
    assert (tmp_path / "out.dcm").read_bytes() == source.read_bytes()


def test_file_meta_is_completed_as_pydicom_completes_it(tmp_path, monkeypatch, ct, spliced):
    ds = dcmread(ct)
    for tag in (0x00020000, 0x00020001, 0x00020013):  # group length, version, implementation version name
        del ds.file_meta[tag]
    source = tmp_path / "sparse-meta.dcm"
    dcmwrite(source, ds, enforce_file_format=False)
    target = tmp_path / "out.dcm"
    transform(source, target, PROFILES["site"], SECRET)
    assert spliced == [True]
    assert target.read_bytes() == by_pydicom(monkeypatch, source, tmp_path / "pydicom.dcm", PROFILES["site"])
    meta = dcmread(target).file_meta
    assert meta.FileMetaInformationVersion == b"\0\1" and meta.ImplementationVersionName


def test_the_file_meta_follows_the_dataset_where_the_source_disagreed(tmp_path, ct):
    ds = dcmread(ct)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    source = tmp_path / "disagrees.dcm"
    dcmwrite(source, ds, enforce_file_format=False)
    transform(source, tmp_path / "out.dcm", PROFILES["nothing"], SECRET)
    assert dcmread(tmp_path / "out.dcm").file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_an_element_read_with_an_explicit_un_vr_stays_as_it_came(tmp_path):
    source = Path(get_testdata_file("rtdose_rle_1frame.dcm"))  # its SOP Class UID is UN
    target = tmp_path / "out.dcm"
    transform(source, target, PROFILES["site"], SECRET)  # the engine reads it for the file meta
    data = source.read_bytes()
    start = data.index(b"\x08\x00\x16\x00UN")
    element = data[start : start + 12 + struct.unpack_from("<L", data, start + 8)[0]]
    assert element in target.read_bytes()
    assert dcmread(target).SOPClassUID == dcmread(source).SOPClassUID


def test_a_new_character_set_is_written_by_pydicom_with_every_value_encoded_again(tmp_path, ct, spliced):
    source = tmp_path / "latin1.dcm"
    ds = dcmread(ct)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.save_as(source, enforce_file_format=True)
    transform(
        source,
        tmp_path / "out.dcm",
        Profile("utf8", operations=(Operation("set", "SpecificCharacterSet", "ISO_IR 192"),)),
        SECRET,
    )
    assert spliced == [False]
    assert dcmread(tmp_path / "out.dcm").PatientName == "Müller^Jürgen"
    assert "Müller".encode() in (tmp_path / "out.dcm").read_bytes()


@pytest.mark.parametrize("after", ["a defined length", "a sequence of undefined length"])
def test_a_tag_given_twice_is_written_by_pydicom(tmp_path, monkeypatch, identified, spliced, after):
    """pydicom keeps the last copy of a tag given twice; the first one's bytes belong to no element read."""
    source = tmp_path / "twice.dcm"
    if after == "a defined length":
        again = b"\x08\x00\x10\x10SH\x04\x00CT99"  # StationName again, just before Pixel Data
    else:  # PatientAge follows OtherPatientIDsSequence: its first copy would end the sequence's bytes
        source = tricky(tmp_path, identified, "explicit")
        again = b"\x10\x00\x10\x10AS\x04\x00070Y"
    data = (identified if after == "a defined length" else source).read_bytes()
    pixels = data.index(b"\xe0\x7f\x10\x00OW")
    source.write_bytes(data[:pixels] + again + data[pixels:])
    transform(source, tmp_path / "out.dcm", PROFILES["site"], SECRET)
    assert spliced == [False]
    written = by_pydicom(monkeypatch, source, tmp_path / "pydicom.dcm", PROFILES["site"])
    assert (tmp_path / "out.dcm").read_bytes() == written


def test_asking_for_the_changes_does_not_change_the_bytes(tmp_path, identified):
    one, two = tmp_path / "one.dcm", tmp_path / "two.dcm"
    assert transform(identified, one, PROFILES["research"], SECRET, changes=True).changes
    assert transform(identified, two, PROFILES["research"], SECRET).changes is None
    assert one.read_bytes() == two.read_bytes()
