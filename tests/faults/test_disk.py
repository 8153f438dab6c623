"""A full disk (a real ENOSPC, on a small tmpfs): the SCP answers 0xA700, keeps nothing partial, and takes
the sender's retry once there is room again."""

import subprocess

import pytest

from apps.routing.dicom_send import File, Target, send
from apps.studies.models import ReceivedInstance

from ..support.dicom import dataset_bytes, synthetic_study

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_answers_a700_keeps_nothing_partial_and_takes_the_retry(
    start_scp, service_env, settings, small_disk, tmp_path
):
    settings.STORAGE_ROOT = small_disk
    env = {**service_env, "STORAGE_ROOT": str(small_disk), "STORAGE_MIN_FREE_BYTES": "0"}  # the disk itself, full
    _, port = start_scp(env=env)
    _, paths = synthetic_study(tmp_path / "modality", count=80)  # ~3 MB for a 2 MB disk
    files = [File("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", p) for p in paths]
    target = Target(ae_title="ROUTER", host="127.0.0.1", port=port, calling_ae_title="MODALITY")

    statuses = [r.status for r in send(target, files)]

    assert set(statuses) == {SUCCESS, OUT_OF_RESOURCES}, statuses
    accepted = [p for p, s in zip(paths, statuses, strict=True) if s == SUCCESS]
    rows = {r.sop_instance_uid: r for r in ReceivedInstance.objects.all()}
    assert set(rows) == {p.stem for p in accepted}  # recorded exactly what was answered success
    for path in accepted:
        assert dataset_bytes(small_disk / rows[path.stem].path) == dataset_bytes(path)
    assert list((small_disk / "tmp").iterdir()) == []  # nothing partial
    assert len(list((small_disk / "instances").rglob("*.dcm"))) == len(accepted)

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)  # room again
    refused = [f for f, s in zip(files, statuses, strict=True) if s != SUCCESS]
    assert {r.status for r in send(target, refused)} == {SUCCESS}
    assert ReceivedInstance.objects.count() == 80
