"""The files the engine writes: valid Part 10, pixels byte for byte, the same bytes on every run and in every
process, and nothing left behind when an instance is held."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from apps.transforms.engine import Held, Operation, Profile, preview, transform

from ..support.dicom import SHIPPED, shipped
from .conftest import SECRET, dcmdump_problems

RESEARCH = Profile("research", deidentify=True, options=frozenset({"retain_longitudinal_modified_dates"}))
# Every encoding the SCP stores, and big endian and implicit VR besides.
SOURCES = [*SHIPPED, "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "rtdose.dcm"]
# Secondary captures are refused by de-identification unless allowed: these tests are about encodings.
ALLOWED = Profile("research", deidentify=True, allow_burned_in=True)


@pytest.mark.parametrize("name", SOURCES)
def test_pixels_transfer_syntax_and_validity_survive_de_identification(tmp_path, name):
    source = shipped(name)
    target = tmp_path / "out.dcm"
    transform(source, target, ALLOWED, SECRET)
    before, after = dcmread(source), dcmread(target)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.PixelData == before.PixelData
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID != before.SOPInstanceUID
    assert dcmdump_problems(target) <= dcmdump_problems(source)


def test_the_pixel_data_element_is_copied_byte_for_byte(tmp_path, ct):
    target = tmp_path / "out.dcm"
    transform(ct, target, RESEARCH, SECRET)
    marker = b"\xe0\x7f\x10\x00OW\x00\x00"
    source_bytes, target_bytes = ct.read_bytes(), target.read_bytes()
    start = source_bytes.index(marker)
    length = int.from_bytes(source_bytes[start + 8 : start + 12], "little")
    element = source_bytes[start : start + 12 + length]
    # CT_small has trailing padding after Pixel Data: X in the Basic Profile, so the file ends with the pixels.
    assert len(source_bytes) > start + len(element)
    assert target_bytes.endswith(element) and target_bytes.count(marker) == 1


def test_two_runs_write_the_same_bytes_and_report_their_sha256(tmp_path, identified):
    one, two = tmp_path / "one.dcm", tmp_path / "two.dcm"
    first = transform(identified, one, RESEARCH, SECRET)
    second = transform(identified, two, RESEARCH, SECRET)
    assert one.read_bytes() == two.read_bytes()
    assert first.sha256 == second.sha256 == hashlib.sha256(one.read_bytes()).hexdigest()
    assert first.size == one.stat().st_size


def test_another_process_writes_the_same_bytes(tmp_path, identified):
    here = transform(identified, tmp_path / "here.dcm", RESEARCH, SECRET)
    code = (
        "import sys; from pathlib import Path; from apps.transforms.engine import Profile, transform; "
        "p = Profile('research', deidentify=True, options=frozenset({'retain_longitudinal_modified_dates'})); "
        f"print(transform(Path(sys.argv[1]), Path(sys.argv[2]), p, {SECRET!r}).sha256)"
    )
    there = subprocess.run(
        [sys.executable, "-c", code, str(identified), str(tmp_path / "there.dcm")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert there.stdout.strip() == here.sha256


def test_a_profile_that_changes_nothing_writes_the_source_bytes(tmp_path, ct):
    result = transform(ct, tmp_path / "out.dcm", Profile("nothing"), b"", changes=True)
    assert (tmp_path / "out.dcm").read_bytes() == ct.read_bytes()
    assert result.changes == []


def test_preview_lists_what_transform_changes_and_writes_nothing(tmp_path, identified):
    before = sorted(tmp_path.rglob("*"))
    changes = preview(identified, RESEARCH, SECRET)
    assert sorted(tmp_path.rglob("*")) == before
    assert changes == transform(identified, tmp_path / "out.dcm", RESEARCH, SECRET, changes=True).changes
    by_keyword = {change.keyword: change for change in changes}
    assert by_keyword["PatientName"].before == "Doe^Jane"
    assert by_keyword["OtherPatientIDs"].after is None
    assert by_keyword["PatientIdentityRemoved"].before is None
    assert "RequestAttributesSequence[0].AccessionNumber" not in by_keyword  # the sequence went whole


def test_preview_raises_held_as_transform_would(identified):
    with pytest.raises(Held):
        preview(identified, Profile("t", deidentify=True, pseudonyms={}), SECRET)


def with_tail(tmp_path: Path, source: Path) -> Path:
    """`source` with a private block and trailing padding after Pixel Data, as some scanners write."""
    ds = dcmread(source)
    path = tmp_path / "tail.dcm"
    ds.save_as(path, enforce_file_format=True)
    tail = DicomBytesIO()
    tail.is_little_endian, tail.is_implicit_VR = True, False
    extra = Dataset()
    extra.add_new(0x7FE10010, "LO", "VENDOR TAIL")
    extra.add_new(0x7FE11001, "LO", "tail secret")
    extra.add_new(0xFFFCFFFC, "OB", b"\0" * 8)
    for element in extra:
        write_data_element(tail, element)
    with open(path, "ab") as fh:
        fh.write(tail.getvalue())
    return path


def test_private_data_and_padding_after_pixel_data_follow_the_profile(tmp_path, ct):
    source = with_tail(tmp_path, ct)
    plain, deidentified, pruned = (tmp_path / n for n in ("plain.dcm", "deid.dcm", "pruned.dcm"))
    transform(source, plain, Profile("site", operations=(Operation("set", "StationName", "X"),)), SECRET)
    transform(source, deidentified, RESEARCH, SECRET)
    transform(source, pruned, Profile("p", operations=(Operation("remove_private", keep_creators=("X",)),)), b"")
    assert dcmread(plain)[0x7FE11001].value == "tail secret" and 0xFFFCFFFC in dcmread(plain)
    for path in (deidentified, pruned):
        ds = dcmread(path)
        assert 0x7FE11001 not in ds and 0x7FE10010 not in ds
        assert ds.PixelData == dcmread(ct).PixelData
    assert 0xFFFCFFFC not in dcmread(deidentified)


def test_de_identification_clears_the_preamble(tmp_path, ct):
    ds = dcmread(ct)
    ds.preamble = b"II*\0" + b"Doe^Jane".ljust(124, b"\0")
    ds.save_as(tmp_path / "tiff.dcm")
    transform(tmp_path / "tiff.dcm", tmp_path / "out.dcm", RESEARCH, SECRET)
    transform(tmp_path / "tiff.dcm", tmp_path / "kept.dcm", Profile("site"), b"")
    assert (tmp_path / "out.dcm").read_bytes()[:128] == b"\0" * 128
    assert (tmp_path / "kept.dcm").read_bytes()[:128] == ds.preamble


def test_a_deflated_instance_is_held(tmp_path):
    with pytest.raises(Held, match="Deflated"):
        transform(Path(get_testdata_file("image_dfl.dcm")), tmp_path / "out.dcm", Profile("site"), b"")
    assert list(tmp_path.iterdir()) == []
