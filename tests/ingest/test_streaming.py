"""Datasets received into spool temp files: whose file is it, and what is left when an association ends."""

import threading

from pynetdicom import dimse_messages

from apps.ingest import streaming
from apps.ingest.storage import Spool


class FakeAssociation:
    """A pynetdicom Association as far as Streams is concerned: a `run` called by its thread."""

    def __init__(self, body) -> None:
        self.body = body

    def run(self) -> None:
        self.body(self)


class ReactorThread(threading.Thread):
    """pynetdicom's DUL thread: it has an `assoc`, and creates the dataset's file."""

    def __init__(self, assoc, target) -> None:
        super().__init__(target=target)
        self.assoc = assoc


def test_files_are_made_in_the_spool_for_watched_associations_and_left_ones_removed_at_the_end(tmp_path):
    spool = Spool(tmp_path)
    streams = streaming.Streams(spool)
    streaming.install()
    made = []

    def association_body(assoc):
        def reactor():
            made.append(dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm"))
            made.append(dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm"))

        dul = ReactorThread(assoc, reactor)
        dul.start()
        dul.join()
        for temp in made:
            temp.write(b"data")
        answered = streams.take(assoc, made[0].name)  # the handler takes the first one ...
        assert answered is made[0]
        spool.adopt(answered)
        answered.discard()
        # ... the second was queued and never served: the association ended first

    assoc = FakeAssociation(association_body)
    streams.watch(assoc)
    thread = threading.Thread(target=assoc.run)
    thread.start()
    thread.join()
    streams.end(assoc)  # as the SCP calls it when the association's thread ends

    assert all(temp.name.startswith(str(spool.tmp)) for temp in made)
    assert list(spool.tmp.iterdir()) == []
    assert len(list(tmp_path.glob("instances/**/*.dcm"))) == 1
    assert streaming._owners == {}


def test_an_association_not_ours_gets_pynetdicoms_own_temp_file(tmp_path):
    streaming.install()
    outside = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    try:
        assert not outside.name.startswith(str(tmp_path))
        assert hasattr(outside, "file")
    finally:
        outside.close()
        __import__("os").unlink(outside.name)


def test_a_temp_file_that_cannot_be_created_holds_the_error(tmp_path):
    spool = Spool(tmp_path)
    spool.tmp.rmdir()  # its folder is gone
    temp = spool.open_temp()
    assert temp.error is not None
    assert temp.write(b"data") == 4
    temp.discard()
