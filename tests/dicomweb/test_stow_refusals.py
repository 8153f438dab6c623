"""What the STOW-RS receiver refuses, each as PS3.18 says (the HTTP status, and per instance the failure
reason in FailedSOPSequence), and that nothing refused is kept: no row, no file, no temp file."""

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from apps.studies.models import ReceivedInstance

from ..support.dicom import shipped, synthetic_study
from .stow import (
    CANNOT_UNDERSTAND,
    MISMATCH,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    curl,
    failed,
    multipart_body,
    nothing_kept,
    referenced,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ct():
    ds = pydicom.dcmread(shipped("ct"), stop_before_pixels=True)
    return shipped("ct").read_bytes(), ds.SOPClassUID, ds.SOPInstanceUID


def post(web, tmp_path, body: bytes, **options):
    path = tmp_path / "body"
    path.write_bytes(body)
    return curl(f"{web.url}/dicomweb/studies{options.pop('study', '')}", path, **options)


def test_a_truncated_part_is_refused_with_0xc000_and_409(web, sender, storage, tmp_path, ct):
    raw, sop_class, sop_instance = ct

    status, _, response = post(web, tmp_path, multipart_body(raw[: len(raw) - 1000]), token=sender)

    assert status == 409
    assert failed(response) == [(sop_class, sop_instance, CANNOT_UNDERSTAND)]  # named by its file meta
    assert nothing_kept(storage)


def test_a_part_that_is_not_dicom_is_refused_with_0xc000_and_409(web, sender, storage, tmp_path):
    status, _, response = post(web, tmp_path, multipart_body(b"%PDF-1.7 not an image " * 50), token=sender)

    assert status == 409
    assert failed(response) == [("", "", CANNOT_UNDERSTAND)]  # it never said which instance it was
    assert nothing_kept(storage)


def test_a_good_part_beside_a_bad_one_is_stored_and_the_answer_is_202(web, sender, storage, tmp_path, ct):
    raw, sop_class, sop_instance = ct
    good = shipped("jpeg2000")

    status, _, response = post(web, tmp_path, multipart_body(raw[:-1000], good.read_bytes()), token=sender)

    assert status == 202
    assert failed(response) == [(sop_class, sop_instance, CANNOT_UNDERSTAND)]
    assert referenced(response) == [(pydicom.dcmread(good).SOPClassUID, pydicom.dcmread(good).SOPInstanceUID)]
    assert ReceivedInstance.objects.count() == 1
    assert len(list((storage / "tmp").iterdir())) == 0


def test_an_instance_of_another_study_than_the_url_names_is_refused_with_0xa900(web, sender, storage, tmp_path, ct):
    raw, sop_class, sop_instance = ct

    status, _, response = post(web, tmp_path, multipart_body(raw), token=sender, study=f"/{generate_uid()}")

    assert status == 409
    assert failed(response) == [(sop_class, sop_instance, MISMATCH)]
    assert nothing_kept(storage)


def test_a_file_meta_that_differs_from_the_dataset_is_refused_with_0xa900(web, sender, storage, tmp_path):
    _, (path,) = synthetic_study(tmp_path / "study", count=1)
    ds = pydicom.dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # what a C-STORE's command would say
    ds.save_as(path)

    status, _, response = post(web, tmp_path, multipart_body(path.read_bytes()), token=sender)

    assert status == 409
    assert failed(response) == [(ds.SOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID, MISMATCH)]
    assert nothing_kept(storage)


def test_a_transfer_syntax_not_stored_here_or_a_sop_class_not_for_storage_is_refused(web, sender, storage, tmp_path):
    deflated = Path(get_testdata_file("image_dfl.dcm"))  # Deflated Explicit VR Little Endian: not taken
    _, (path,) = synthetic_study(tmp_path / "study", count=1, sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1")
    not_storage = pydicom.dcmread(path)  # Study Root Query/Retrieve - FIND: a SOP class, but not a storage one
    body = multipart_body(deflated.read_bytes(), path.read_bytes())

    status, _, response = post(web, tmp_path, body, token=sender)

    assert status == 409
    assert [reason for _, _, reason in failed(response)] == [TRANSFER_SYNTAX_NOT_SUPPORTED, SOP_CLASS_NOT_SUPPORTED]
    assert failed(response)[1][:2] == (not_storage.SOPClassUID, not_storage.SOPInstanceUID)
    assert nothing_kept(storage)


def test_below_the_free_space_watermark_each_instance_is_refused_with_0xa700(start_web, sender, storage, tmp_path, ct):
    web = start_web(STORAGE_MIN_FREE_BYTES=str(2**60))
    raw, sop_class, sop_instance = ct

    status, _, response = post(web, tmp_path, multipart_body(raw), token=sender)

    assert status == 409
    assert failed(response) == [(sop_class, sop_instance, OUT_OF_RESOURCES)]
    assert nothing_kept(storage)


def test_a_body_over_the_limit_answers_413_unread(start_web, sender, storage, tmp_path, ct):
    web = start_web(STOW_MAX_BYTES="100000")
    raw, _, _ = ct
    body = multipart_body(raw, raw, raw)  # 118 KB

    status, content_type, response = post(web, tmp_path, body, token=sender)

    assert (status, content_type) == (413, "application/json")
    assert response["error"]["code"] == "payload_too_large"
    assert nothing_kept(storage)

    # Chunked, the length is not declared: the body is cut off at the limit, the part being read with it.
    status, _, response = post(web, tmp_path, body, token=sender, chunked=True)
    assert status == 413
    assert nothing_kept(storage)


def test_a_body_that_is_not_multipart_answers_400(web, sender, storage, tmp_path, ct):
    raw, _, _ = ct

    cut_short = multipart_body(raw)[:-30]  # no closing boundary: the part never ended
    assert post(web, tmp_path, cut_short, token=sender)[0] == 400
    assert post(web, tmp_path, raw, token=sender)[0] == 400  # a bare file, no boundary anywhere
    assert post(web, tmp_path, multipart_body(), token=sender)[0] == 400  # no part at all
    assert nothing_kept(storage)


def test_without_a_valid_token_it_answers_401(web, storage, tmp_path, ct):
    raw, _, _ = ct

    status, _, response = post(web, tmp_path, multipart_body(raw))
    assert status == 401
    assert response["error"]["code"] == "not_authenticated"
    assert post(web, tmp_path, multipart_body(raw), token="0" * 64)[0] == 401
    assert nothing_kept(storage)


def test_a_token_without_the_sender_role_answers_403(web, outsider, storage, tmp_path, ct):
    raw, _, _ = ct

    status, _, response = post(web, tmp_path, multipart_body(raw), token=outsider)

    assert status == 403
    assert "stow-senders" in response["error"]["message"]
    assert nothing_kept(storage)


def test_a_body_that_is_not_multipart_related_dicom_answers_415(web, sender, storage, tmp_path, ct):
    raw, _, _ = ct
    body = multipart_body(raw)

    assert post(web, tmp_path, raw, token=sender, content_type="application/dicom")[0] == 415
    metadata = 'multipart/related; type="application/dicom+json"; boundary=stow-test-7d3f1e'
    assert post(web, tmp_path, body, token=sender, content_type=metadata)[0] == 415
    assert post(web, tmp_path, body, token=sender, content_type="multipart/form-data; boundary=x")[0] == 415
    assert nothing_kept(storage)
