"""Custody when our own side fails: a failure status the sender can act on, and no file without its row."""

import pytest
from django.db import OperationalError
from pydicom.uid import ExplicitVRLittleEndian

from apps.ingest import services
from apps.ingest.storage import Spool
from apps.studies.models import ReceivedInstance

from ..support.dicom import dataset_bytes, received_into, shipped

CT_INSTANCE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
ORIGIN = services.Origin(calling_ae_title="MODALITY", called_ae_title="ROUTER", peer_address="127.0.0.1")


def receive(spool: Spool) -> services.Outcome:
    received = received_into(
        spool,
        dataset_bytes(shipped("ct")),
        sop_class_uid=CT_CLASS,
        sop_instance_uid=CT_INSTANCE,
        transfer_syntax=ExplicitVRLittleEndian,
    )
    try:
        return services.instance_receive(
            spool=spool,
            received=received,
            transfer_syntax=ExplicitVRLittleEndian,
            sop_class_uid=CT_CLASS,
            sop_instance_uid=CT_INSTANCE,
            origin=ORIGIN,
        )
    finally:
        received.discard()


def files(spool: Spool) -> list:
    return sorted(spool.root.glob("instances/**/*.dcm")) + sorted(spool.tmp.iterdir())


def test_it_answers_a700_when_the_free_space_cannot_be_read(db, storage, monkeypatch):
    spool = Spool(storage)

    def unmounted():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool, "free_bytes", unmounted)
    assert receive(spool).status == services.OUT_OF_RESOURCES


def test_a_database_error_comparing_a_second_copy_answers_a700_and_keeps_no_file(
    transactional_db, storage, monkeypatch
):
    """The service closes the broken connection: a transactional test lets the next query open another."""
    spool = Spool(storage)
    assert receive(spool).status == services.SUCCESS
    kept = files(spool)

    def database_gone(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "received_instance_second_copy", database_gone)
    assert receive(spool).status == services.OUT_OF_RESOURCES
    assert files(spool) == kept
    assert ReceivedInstance.objects.count() == 1


def test_an_unexpected_error_while_recording_keeps_no_file(db, storage, monkeypatch):
    spool = Spool(storage)

    def broken(**kwargs):
        raise ValueError("a string literal cannot contain NUL (0x00) characters")

    monkeypatch.setattr(services, "received_instance_register", broken)
    with pytest.raises(ValueError):  # pynetdicom answers 0xC211 for it
        receive(spool)
    assert files(spool) == []


def test_a_write_that_failed_while_receiving_answers_a700_and_keeps_no_file(db, storage, monkeypatch):
    """A disk that fills up in the middle of a dataset: pynetdicom's thread must not see the error."""
    spool = Spool(storage)
    temp = spool.open_temp()
    temp.write(b"\0" * 128 + b"DICM")

    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("apps.ingest.storage.os.write", disk_full)
    assert temp.write(b"x" * 1000) == 1000  # held, not raised
    monkeypatch.undo()
    temp.write(b"more")  # dropped after the failure
    outcome = services.instance_receive(
        spool=spool,
        received=temp,
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=CT_CLASS,
        sop_instance_uid=CT_INSTANCE,
        origin=ORIGIN,
    )
    temp.discard()
    assert outcome.status == services.OUT_OF_RESOURCES
    assert files(spool) == []


def test_a_row_whose_file_was_removed_after_a_lost_commit_answer_takes_the_next_copy(db, storage):
    """The commit reached the server but its answer did not: we answered 0xA700 and removed the file.
    The sender's retry must not be dropped as a duplicate of a row that has no file."""
    spool = Spool(storage)
    assert receive(spool).status == services.SUCCESS
    row = ReceivedInstance.objects.get()
    (storage / row.path).unlink()

    assert receive(spool).status == services.SUCCESS
    row.refresh_from_db()
    assert (storage / row.path).exists()
    assert files(spool) == [storage / row.path]
    assert ReceivedInstance.objects.count() == 1
