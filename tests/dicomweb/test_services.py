"""The STOW-RS service without HTTP: bodies cut at any byte, broken off after a stored instance, over the
limit half way; the file meta however it is laid out; the hand-over to the pipeline."""

import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from apps.dicomweb import multipart, part10, services
from apps.dicomweb.views import http_status, store_response
from apps.ingest.services import Origin
from apps.ingest.storage import Spool
from apps.studies.models import ReceivedInstance

from ..support.dicom import dataset_bytes, shipped, synthetic_study
from .stow import (
    BOUNDARY,
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    failed,
    multipart_body,
    referenced,
)

ORIGIN = Origin(calling_ae_title="gateway", called_ae_title="ROUTER", peer_address="10.0.0.7")


class Trickle(io.RawIOBase):
    """A request body that arrives `size` bytes at a time."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.pos = data, size, 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.data[self.pos : self.pos + min(n, self.size)]
        self.pos += len(chunk)
        return chunk


def receive(storage, body: bytes, *, read_size: int = multipart.CHUNK, max_bytes: int = 10**9, study=None):
    handed: list[dict] = []
    receipt = services.instances_receive(
        stream=Trickle(body, read_size),
        boundary=BOUNDARY,
        max_bytes=max_bytes,
        spool=Spool(storage),
        origin=ORIGIN,
        study_instance_uid=study,
        on_studies_received=handed.append,
    )
    return receipt, store_response(receipt), handed


def temp_files(storage) -> list:
    return list((storage / "tmp").iterdir())


@pytest.mark.django_db
@pytest.mark.parametrize("read_size", [1, 7, 4096])
def test_a_body_read_a_few_bytes_at_a_time_is_stored_byte_for_byte(storage, tmp_path, read_size):
    _, paths = synthetic_study(tmp_path / "study", count=2)

    receipt, response, _ = receive(storage, multipart_body(*(p.read_bytes() for p in paths)), read_size=read_size)

    assert len(referenced(response)) == 2 and http_status(receipt) == 200
    for path in paths:
        row = ReceivedInstance.objects.get(sop_instance_uid=path.stem)
        assert dataset_bytes(storage / row.path) == dataset_bytes(path)
        assert (row.calling_ae_title, row.called_ae_title, row.peer_address) == ("gateway", "ROUTER", "10.0.0.7")


@pytest.mark.django_db
def test_a_body_broken_off_after_a_stored_instance_keeps_it_and_fails_the_part_being_read(storage, tmp_path):
    uid, paths = synthetic_study(tmp_path / "study", count=2)
    body = multipart_body(*(p.read_bytes() for p in paths))
    cut = len(body) - 20_000  # inside the second part

    receipt, response, handed = receive(storage, body[:cut])

    assert isinstance(receipt.body_error, multipart.Malformed)
    assert referenced(response) == [(pydicom.dcmread(paths[0]).SOPClassUID, paths[0].stem)]
    assert failed(response) == [(pydicom.dcmread(paths[1]).SOPClassUID, paths[1].stem, CANNOT_UNDERSTAND)]
    assert http_status(receipt) == 202  # one is stored: the answer says so, whatever went wrong after it
    assert list(handed[0]) == [uid]  # the stored one's study goes on
    assert temp_files(storage) == []


@pytest.mark.django_db
def test_a_chunked_body_over_the_limit_half_way_fails_the_part_being_read_with_0xa700(storage, tmp_path):
    _, paths = synthetic_study(tmp_path / "study", count=3)
    body = multipart_body(*(p.read_bytes() for p in paths))

    receipt, response, _ = receive(storage, body, read_size=8192, max_bytes=len(body) - 50_000)

    assert isinstance(receipt.body_error, multipart.TooLarge)
    assert len(referenced(response)) == 1
    assert [reason for _, _, reason in failed(response)] == [OUT_OF_RESOURCES]
    assert http_status(receipt) == 202
    assert temp_files(storage) == []

    ReceivedInstance.objects.all().delete()
    receipt, _, _ = receive(storage, body, read_size=8192, max_bytes=30_000)  # nothing stored yet: 413
    assert http_status(receipt) == 413


@pytest.mark.django_db
def test_the_studies_received_are_handed_over_once_with_their_urgency(storage, tmp_path):
    stat, stat_paths = synthetic_study(tmp_path / "a", count=2, priority="STAT")
    routine, routine_paths = synthetic_study(tmp_path / "b", count=1)

    _, _, handed = receive(storage, multipart_body(*(p.read_bytes() for p in [*stat_paths, *routine_paths])))

    (studies,) = handed
    assert set(studies) == {stat, routine}
    assert ("RequestedProcedurePriority", "STAT") in studies[stat]
    assert ("RequestedProcedurePriority", "STAT") not in studies[routine]


@pytest.mark.django_db
def test_a_failed_hand_over_leaves_the_instances_stored_for_the_reconciler(storage, tmp_path):
    _, paths = synthetic_study(tmp_path / "study", count=1)

    def broker_away(studies):
        raise ConnectionError("broker away")

    receipt = services.instances_receive(
        stream=io.BytesIO(multipart_body(paths[0].read_bytes())),
        boundary=BOUNDARY,
        max_bytes=10**9,
        spool=Spool(storage),
        origin=ORIGIN,
        study_instance_uid=None,
        on_studies_received=broker_away,
    )

    assert len(receipt.stored) == 1 and ReceivedInstance.objects.count() == 1


@pytest.mark.django_db
def test_a_part_without_a_content_type_is_dicom_and_one_of_another_type_is_refused(storage):
    raw = shipped("ct").read_bytes()
    body = b"--%s\r\n\r\n%s\r\n" % (BOUNDARY.encode(), raw)
    body += b"--%s\r\nContent-Type: application/dicom+json\r\n\r\n[]\r\n--%s--" % (BOUNDARY.encode(), BOUNDARY.encode())

    receipt, response, _ = receive(storage, body)

    assert len(referenced(response)) == 1
    assert failed(response) == [("", "", CANNOT_UNDERSTAND)]


def file_meta_without_group_length(path) -> bytes:
    """A Part 10 file whose file meta lacks (0002,0000), which PS3.10 requires and some writers leave out."""
    raw = path.read_bytes()
    assert raw[132:136] == b"\x02\x00\x00\x00"
    return raw[:132] + raw[144:]


def test_the_file_meta_is_read_with_or_without_its_group_length():
    path = shipped("jpeg2000")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    expected = part10.FileMeta(str(ds.file_meta.TransferSyntaxUID), ds.SOPClassUID, ds.SOPInstanceUID)
    raw = path.read_bytes()

    meta, start = part10.file_meta(raw)
    assert meta == expected and raw[start:] == dataset_bytes(path)
    meta, start = part10.file_meta(file_meta_without_group_length(path))
    assert meta == expected and file_meta_without_group_length(path)[start:] == dataset_bytes(path)
    assert part10.file_meta(raw[: start - 1]) is None  # more to come


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"\0" * 128 + b"DICX" + b"\0" * 20, "no DICM"),
        (b"\0" * 128 + b"DICM" + b"\x08\x00\x16\x00UI\x04\x001.2\0", "no file meta"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00ZZ\x00\x00" + b"\0" * 8, "unknown VR"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\0\0" + struct.pack("<L", 2**20), "longer than"),
    ],
)
def test_a_head_that_is_not_a_part10_file_meta_is_refused(head, why):
    with pytest.raises(part10.NotPart10, match=why):
        part10.file_meta(head + b"\0" * 70_000 if why == "longer than" else head)


def test_a_file_meta_with_a_uid_that_is_not_one_is_refused():
    raw = shipped("ct").read_bytes()
    sop_class = pydicom.dcmread(shipped("ct"), stop_before_pixels=True).SOPClassUID.encode()
    at = raw.index(sop_class)  # the first: MediaStorageSOPClassUID, in the file meta
    broken = raw[:at] + sop_class[:-1] + b"x" + raw[at + len(sop_class) :]

    with pytest.raises(part10.NotPart10, match="MediaStorageSOPClassUID is not a valid UID"):
        part10.file_meta(broken)


@pytest.mark.django_db
def test_a_refused_part_cut_short_keeps_its_own_reason(storage):
    deflated = Path(get_testdata_file("image_dfl.dcm")).read_bytes()

    receipt, response, _ = receive(storage, multipart_body(deflated)[:-40])

    assert isinstance(receipt.body_error, multipart.Malformed)
    assert [reason for _, _, reason in failed(response)] == [TRANSFER_SYNTAX_NOT_SUPPORTED]
    assert http_status(receipt) == 400 and temp_files(storage) == []
