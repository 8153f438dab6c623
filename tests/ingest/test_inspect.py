import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from apps.ingest.inspect import Unreadable, inspect_dataset

from ..support.dicom import dataset_bytes, shipped


def test_it_reads_the_uids_of_a_valid_dataset():
    identity = inspect_dataset(dataset_bytes(shipped("ct")), ExplicitVRLittleEndian)
    assert identity.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert identity.study_instance_uid.startswith("1.3.6.1.4.1.5962")


@pytest.mark.parametrize("name", ["jpeg", "jpeg2000", "rle", "jpeg_ls", "mr"])
def test_compressed_and_other_shipped_files_are_understood(name):
    from pydicom import dcmread

    ts = dcmread(shipped(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert inspect_dataset(dataset_bytes(shipped(name)), ts).sop_class_uid


@pytest.mark.parametrize("cut", [1, 100, 1000, 30000])
def test_a_truncated_dataset_is_refused(cut):
    raw = dataset_bytes(shipped("ct"))
    with pytest.raises(Unreadable):
        inspect_dataset(raw[: len(raw) - cut], ExplicitVRLittleEndian)


@pytest.mark.parametrize("name", ["jpeg", "jpeg2000", "rle", "jpeg_ls"])
@pytest.mark.parametrize("cut", [1, 7, 100, 500])
def test_a_truncated_encapsulated_dataset_is_refused(name, cut):
    from pydicom import dcmread

    ts = dcmread(shipped(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
    raw = dataset_bytes(shipped(name))
    with pytest.raises(Unreadable):
        inspect_dataset(raw[:-cut], ts)


@pytest.mark.parametrize("payload", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, b"MZ\x90\x00" + b"\xff" * 300])
def test_a_payload_that_is_not_dicom_is_refused(payload):
    with pytest.raises(Unreadable):
        inspect_dataset(payload, ImplicitVRLittleEndian)


def test_a_path_like_uid_is_refused():
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.filewriter import write_dataset

    ds = dcmread(shipped("ct"))
    ds.SOPInstanceUID = "../../etc/cron.d/x"
    fp = BytesIO()
    from pydicom.filebase import DicomFileLike

    out = DicomFileLike(fp)
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    with pytest.raises(Unreadable, match="SOPInstanceUID is not a valid UID"):
        inspect_dataset(fp.getvalue(), ExplicitVRLittleEndian)
