import os

import pytest

from apps.ingest.storage import Spool


def test_it_writes_atomically_under_a_uuid_path(tmp_path):
    spool = Spool(tmp_path)
    relative = spool.write(b"DICM data")
    assert (tmp_path / relative).read_bytes() == b"DICM data"
    assert relative.startswith("instances/") and relative.endswith(".dcm")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    spool = Spool(tmp_path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        spool.write(b"x" * 1000)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not list((tmp_path).glob("instances/**/*.dcm"))


def test_sweep_removes_only_the_temp_files_of_processes_that_are_gone(tmp_path):
    import socket
    import subprocess
    import time

    spool = Spool(tmp_path)
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    files = {
        "killed": f"{host}.{dead.pid}.a.part",
        "ours": f"{host}.{os.getpid()}.b.part",
        "alive": f"{host}.1.c.part",
        "other host, fresh": "elsewhere.4242.d.part",
        "other host, old": "elsewhere.4243.e.part",
    }
    for name in files.values():
        (spool.tmp / name).write_bytes(b"partial")
    day_ago = time.time() - 25 * 3600
    os.utime(spool.tmp / files["other host, old"], (day_ago, day_ago))

    assert spool.sweep() == 2
    left = {p.name for p in spool.tmp.iterdir()}
    assert left == {files["ours"], files["alive"], files["other host, fresh"]}


@pytest.mark.django_db
def test_the_storage_sweep_removes_only_old_files_no_row_names(storage):
    import time

    from apps.pipeline.services import storage_sweep
    from apps.studies.models import ReceivedInstance

    spool = Spool(storage)
    recorded, orphan, fresh_orphan = spool.write(b"a"), spool.write(b"b"), spool.write(b"c")
    ReceivedInstance.objects.create(
        sop_instance_uid="1.2.3", sop_class_uid="1.2", study_instance_uid="1.2.4", path=recorded, size=1
    )
    old = time.time() - 3600
    for relative in (recorded, orphan):
        os.utime(storage / relative, (old, old))

    assert storage_sweep() == 1
    assert (storage / recorded).exists() and (storage / fresh_orphan).exists()
    assert not (storage / orphan).exists()
