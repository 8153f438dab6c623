"""A 1 GB instance received by STOW-RS costs the web process no more memory than a small one: the body is
streamed to the spool as it arrives, never held. The instance is generated as it is sent (never on the
sender's disk) and stored once (then removed). About 10 s here; it moves a gigabyte through the disk."""

import http.client
import json
import re
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import pytest
from pydicom.uid import generate_uid

from apps.dicomweb import part10
from apps.studies.models import ReceivedInstance

from ..support.dicom import shipped
from .stow import BOUNDARY, DICOM_BODY, referenced

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

GIGABYTE = 1 << 30
MEGABYTE = 1 << 20


def big_instance_head(pixel_bytes: int) -> tuple[pydicom.Dataset, bytes]:
    """A CT whose 16-bit pixel data is `pixel_bytes` long: the Part 10 file up to the pixel data's value."""
    ds = pydicom.dcmread(shipped("ct"), stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 16384, pixel_bytes // 2 // 16384
    with BytesIO() as out:
        ds.save_as(out, enforce_file_format=True)
        head = out.getvalue()
    return ds, head + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")


def memory(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(kb) * 1024 for key, kb in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}


def stow_generated(url: str, token: str, head: bytes, pixel_bytes: int) -> http.client.HTTPResponse:
    opening = b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % BOUNDARY.encode()
    closing = b"\r\n--%s--\r\n" % BOUNDARY.encode()
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    connection.putrequest("POST", "/dicomweb/studies")
    connection.putheader("Content-Type", DICOM_BODY)
    connection.putheader("Content-Length", str(len(opening) + len(head) + pixel_bytes + len(closing)))
    connection.putheader("Authorization", f"Token {token}")
    connection.putheader("Accept", "application/dicom+json")
    connection.endheaders(opening + head)
    block = bytes(range(256)) * (MEGABYTE // 256)  # never holds the boundary
    for _ in range(pixel_bytes // MEGABYTE):
        connection.send(block)
    connection.send(closing)
    return connection.getresponse()


def test_the_web_process_s_memory_stays_flat_receiving_a_1_gb_instance(start_web, sender, storage):
    web = start_web(STOW_MAX_BYTES=str(2 * GIGABYTE))
    ds, head = big_instance_head(GIGABYTE)
    _, small_head = big_instance_head(MEGABYTE)
    # A small one first, so the worker has loaded everything a request needs before it is measured.
    assert stow_generated(web.url, sender, small_head, MEGABYTE).status == 200
    pid = web.worker_pid
    before = memory(pid)["VmRSS"]
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now

    response = stow_generated(web.url, sender, head, GIGABYTE)

    assert response.status == 200
    assert referenced(json.loads(response.read())) == [(ds.SOPClassUID, ds.SOPInstanceUID)]
    growth = memory(pid)["VmHWM"] - before
    print(f"web worker RSS {before / MEGABYTE:.0f} MB before; peak growth {growth / MEGABYTE:.1f} MB for 1 GB")
    assert growth < 100 * MEGABYTE
    row = ReceivedInstance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    _, dataset_starts = part10.file_meta(head)
    assert row.size == len(head) - dataset_starts + GIGABYTE
    (storage / row.path).unlink()  # a gigabyte: not left in the test's folder
