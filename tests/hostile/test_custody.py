"""Custody when our own side fails: a failure status the sender can act on, and no file without its row."""

import pytest
from django.db import OperationalError
from pydicom.uid import ExplicitVRLittleEndian

from apps.ingest import services
from apps.ingest.storage import Spool
from apps.studies.models import ReceivedInstance

from ..support.dicom import dataset_bytes, shipped

CT_INSTANCE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
ORIGIN = services.Origin(calling_ae_title="MODALITY", called_ae_title="ROUTER", peer_address="127.0.0.1")


def receive(spool: Spool) -> services.Outcome:
    raw = dataset_bytes(shipped("ct"))
    return services.instance_receive(
        spool=spool,
        raw=raw,
        encode_file=lambda: b"\0" * 128 + b"DICM" + raw,
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=CT_CLASS,
        sop_instance_uid=CT_INSTANCE,
        origin=ORIGIN,
    )


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

    monkeypatch.setattr(services, "received_instance_copy_differs", database_gone)
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
