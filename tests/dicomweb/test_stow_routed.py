"""A study received by STOW-RS takes the same road as one received by C-STORE: on real services (gunicorn,
a Celery worker on Redis, PostgreSQL), pydicom's files sent with curl reach a dcmtk storescp byte for byte."""

import os

import pydicom
import pytest

from apps.configuration.services import config_import
from apps.pipeline.selectors import study_status

from ..support.dicom import dataset_bytes, shipped
from ..support.processes import Process, dcmtk, free_port, wait_until
from .stow import curl, multipart_body, referenced

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1}
rules:
  - {name: everything, priority: 100, fallback: true, match: {}, destinations: [pacs]}
"""


def delivered(uid: str) -> bool:
    status = study_status(study_instance_uid=uid)
    return bool(status and status["deliveries"] and all(d["state"] == "delivered" for d in status["deliveries"]))


@pytest.fixture
def bit_preserving_storescp(tmp_path, log_dir):
    """dcmtk storescp writing each dataset exactly as it arrived (+B): without it dcmtk drops group lengths
    and trailing padding, which pydicom's files hold. Returns (port, folder)."""
    port, folder = free_port(), tmp_path / "pacs"
    folder.mkdir()
    proc = Process(
        "storescp-bit-preserving",
        [dcmtk("storescp"), "+B", "+xa", "-uf", "-aet", "PACS", "-od", str(folder), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        log_dir=log_dir,
    )
    proc.wait_for_port(port)
    yield port, folder
    proc.stop()


def test_pydicom_s_files_received_by_stow_rs_are_routed_to_a_dcmtk_storescp_byte_for_byte(
    web, sender, start_worker, bit_preserving_storescp, tmp_path
):
    pacs_port, pacs_folder = bit_preserving_storescp
    config_import(CONFIG % {"port": pacs_port})
    start_worker()
    files = [shipped(name) for name in ("ct", "jpeg", "jpeg_lossless", "jpeg_ls", "jpeg2000")]
    body = tmp_path / "body"
    body.write_bytes(multipart_body(*(f.read_bytes() for f in files)))

    status, _, response = curl(f"{web.url}/dicomweb/studies", body, token=sender)

    assert status == 200 and len(referenced(response)) == len(files)
    studies = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}
    for uid in studies:
        wait_until(lambda uid=uid: delivered(uid), timeout=60, what=f"study {uid} delivered")
    assert sorted(dataset_bytes(p) for p in pacs_folder.iterdir()) == sorted(dataset_bytes(f) for f in files)
