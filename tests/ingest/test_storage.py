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
