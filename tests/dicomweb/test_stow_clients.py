"""Instances sent by STOW-RS with real clients (dicomweb-client, curl) to the web process as it runs
(gunicorn): stored byte for byte with the SCP's custody, recorded with the sender as their origin, and
handed to the pipeline as a study received by C-STORE is."""

from io import BytesIO

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid

from apps.studies.models import ReceivedInstance, Study

from ..support.dicom import SHIPPED, dataset_bytes, shipped, synthetic_study
from .stow import curl, multipart_body, referenced, stored_bytes

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def client(web, token: str, **options) -> DICOMwebClient:
    return DICOMwebClient(f"{web.url}/dicomweb", headers={"Authorization": f"Token {token}"}, **options)


def sent_by_dicomweb_client(ds: pydicom.Dataset) -> bytes:
    """The dataset bytes dicomweb-client puts in its part: it writes each dataset with pydicom.dcmwrite."""
    with BytesIO() as out:
        pydicom.dcmwrite(out, ds)
        out.seek(0)
        read_preamble(out, False)
        _read_file_meta_info(out)
        return out.read()


def test_it_stores_pydicom_s_files_compressed_included_byte_for_byte_from_dicomweb_client(web, sender, storage):
    datasets = [pydicom.dcmread(shipped(name)) for name in SHIPPED]
    for ds in datasets:  # three of them share one SOP Instance UID (MR_small as such, as RLE and as JPEG-LS)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    response = client(web, sender).store_instances(datasets)

    uids = [(ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets]
    assert sorted(referenced(response)) == sorted(uids)
    assert "FailedSOPSequence" not in response
    for name, ds in zip(SHIPPED, datasets, strict=True):
        assert stored_bytes(storage, ds.SOPInstanceUID) == sent_by_dicomweb_client(ds), name
    rows = ReceivedInstance.objects.all()
    assert {(r.calling_ae_title, r.called_ae_title, r.peer_address) for r in rows} == {
        ("modality-gateway", "ROUTER", "127.0.0.1")  # the username cut to an AE title's 16 characters
    }
    assert {r.transfer_syntax_uid for r in rows} == {str(ds.file_meta.TransferSyntaxUID) for ds in datasets}
    # Handed over when the request ended: each study registered and its chain started (persist onwards).
    assert set(Study.objects.values_list("study_instance_uid", flat=True)) == {ds.StudyInstanceUID for ds in datasets}


def test_it_stores_files_sent_as_they_are_by_curl_to_the_study_s_url(web, sender, storage, tmp_path):
    names = ("ct", "jpeg", "jpeg_lossless", "jpeg_ls", "jpeg2000")  # one file for each SOP Instance UID
    files = [shipped(name) for name in names]
    body = tmp_path / "body"
    body.write_bytes(multipart_body(*(f.read_bytes() for f in files)))
    ct = pydicom.dcmread(files[0], stop_before_pixels=True)

    status, content_type, response = curl(f"{web.url}/dicomweb/studies", body, token=sender)

    assert (status, content_type) == (200, "application/dicom+json")
    assert len(referenced(response)) == len(files)
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert stored_bytes(storage, uid) == dataset_bytes(path), path.name  # the files' own datasets

    # To the study's own URL: a study of three, each checked against the study the URL names.
    uid, paths = synthetic_study(tmp_path / "study", count=3)
    body.write_bytes(multipart_body(*(p.read_bytes() for p in paths)))
    status, _, response = curl(f"{web.url}/dicomweb/studies/{uid}", body, token=sender)
    assert status == 200
    assert len(referenced(response)) == 3
    assert ReceivedInstance.objects.filter(study_instance_uid=uid).count() == 3
    assert Study.objects.filter(study_instance_uid__in=[uid, ct.StudyInstanceUID]).count() == 2


def test_a_body_above_a_megabyte_that_dicomweb_client_sends_chunked_is_stored(web, sender, storage, tmp_path):
    uid, paths = synthetic_study(tmp_path / "study", count=40)  # 1.6 MB: chunked transfer encoding
    datasets = [pydicom.dcmread(p) for p in paths]

    response = client(web, sender, chunk_size=64 * 1024).store_instances(datasets, study_instance_uid=uid)

    assert len(referenced(response)) == 40
    assert all(stored_bytes(storage, p.stem) == dataset_bytes(p) for p in paths)
