"""A retrieve streams the stored file from disk: the web process's memory does not grow with the size of what
it sends. A 256 MB instance is written once to disk, held as the pipeline holds it, and retrieved."""

import hashlib
import http.client
from urllib.parse import urlsplit

import pytest

from .reads import hold, stored_sha256
from .test_stow_memory import MEGABYTE, big_instance_head, memory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SIZE = 256 * MEGABYTE


def big_file(path, pixel_bytes: int):
    ds, head = big_instance_head(pixel_bytes)
    block = bytes(range(256)) * (MEGABYTE // 256)
    with open(path, "wb") as fh:
        fh.write(head)
        for _ in range(pixel_bytes // MEGABYTE):
            fh.write(block)
    return ds


def retrieve_digest(url: str, token: str, path: str) -> tuple[int, str, int]:
    """GET `path`, reading the body a megabyte at a time: (status, SHA-256 of the body, its length)."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    connection.request("GET", path, headers={"Authorization": f"Token {token}"})
    response = connection.getresponse()
    digest, length = hashlib.sha256(), 0
    while chunk := response.read(MEGABYTE):
        digest.update(chunk)
        length += len(chunk)
    return response.status, digest.hexdigest(), length


def test_the_web_process_s_memory_stays_flat_sending_a_256_mb_instance(web, reader, storage, tmp_path):
    big_file(tmp_path / "small.dcm", MEGABYTE)
    small = hold(storage, [tmp_path / "small.dcm"])
    big_ds = big_file(tmp_path / "big.dcm", SIZE)
    big = hold(storage, [tmp_path / "big.dcm"])
    (tmp_path / "big.dcm").unlink()
    # A small one first, so the worker has loaded everything a request needs before it is measured.
    assert retrieve_digest(web.url, reader, f"/dicomweb/studies/{small.study_instance_uid}")[0] == 200
    pid = web.worker_pid
    before = memory(pid)["VmRSS"]
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # the peak (VmHWM) starts again from now

    status, _, length = retrieve_digest(web.url, reader, f"/dicomweb/studies/{big.study_instance_uid}")

    assert status == 200 and length > SIZE
    growth = memory(pid)["VmHWM"] - before
    print(f"web worker RSS {before / MEGABYTE:.0f} MB before; peak growth {growth / MEGABYTE:.1f} MB for 256 MB")
    assert growth < 64 * MEGABYTE
    instance = big.instances.get()
    assert instance.sop_instance_uid == big_ds.SOPInstanceUID and instance.sha256 == stored_sha256(instance)
