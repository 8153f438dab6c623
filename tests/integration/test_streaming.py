"""Forwarding on receipt: instances reach the destination while the study's association is still open, each
once, through the same ledger; the study is still checked, routed and assigned after it arrived; a stream
cut by the destination going away is completed by the normal delivery path."""

import time

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from apps.configuration.services import config_import
from apps.reading.models import Assignment
from apps.routing.models import Delivery, DeliveryItem, StreamDecision
from apps.studies.models import Study

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import dataset_bytes, synthetic_study
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def config(port: int, mode: str = "on_receipt") -> str:
    return (
        f"""
destinations:
  - {{name: neuro, ae_title: NEURO, host: 127.0.0.1, port: {port}}}
rules:
  - {{name: heads, priority: 10, forward_mode: {mode}, match: {{modality: [CT]}}, destinations: [neuro]}}
"""
        + ACHEN_ON_SHIFT
    )


class Modality:
    """A pynetdicom SCU that sends instances one at a time over one association, for as long as it is told."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        self.assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        assert self.assoc.is_established

    def send(self, path) -> int:
        return int(self.assoc.send_c_store(path).Status)

    def release(self) -> None:
        self.assoc.release()


def test_instances_reach_the_destination_while_the_association_is_open_each_once(
    start_scp, start_worker, storescp, tmp_path
):
    _, dest_port, folder = storescp("NEURO")
    config_import(config(dest_port))
    _, port = start_scp()
    start_worker()
    study_uid, paths = synthetic_study(tmp_path / "ct", count=6, body_part="HEAD")
    modality = Modality(port)
    try:
        for n, path in enumerate(paths, start=1):
            assert modality.send(path) == 0x0000
            started = time.monotonic()
            # Each instance is at the destination before the next is sent: the association is still open.
            wait_until(lambda n=n: len(list(folder.iterdir())) >= n, timeout=30, what=f"instance {n} forwarded")
            assert time.monotonic() - started < 10
        assert Study.objects.get(study_instance_uid=study_uid).arriving
    finally:
        modality.release()

    study = Study.objects.get(study_instance_uid=study_uid)
    wait_until(lambda: Assignment.objects.filter(study=study).exists(), timeout=60, what="the study assigned")
    delivery = Delivery.objects.get(study=study)
    wait_until(
        lambda: Delivery.objects.get(pk=delivery.pk).state == Delivery.State.DELIVERED, timeout=30, what="delivered"
    )
    items = DeliveryItem.objects.filter(delivery=delivery)
    assert items.count() == 6 and {i.state for i in items} == {DeliveryItem.State.DELIVERED}
    assert all(i.attempts == 1 for i in items)  # each once
    assert len(list(folder.iterdir())) == 6  # and nothing twice
    sources = {dcmread(p).SOPInstanceUID: p for p in paths}
    for received in folder.iterdir():
        assert dataset_bytes(received) == dataset_bytes(sources[dcmread(received).SOPInstanceUID])
    decision = StreamDecision.objects.get(study=study)
    assert decision.destinations == ["neuro"] and decision.discrepancy == [] and decision.checked_at
    assert not Study.objects.get(pk=study.pk).arriving


def test_after_qc_rules_still_wait_for_the_whole_study(start_scp, start_worker, storescp, tmp_path):
    _, dest_port, folder = storescp("NEURO")
    config_import(config(dest_port, mode="after_qc"))
    _, port = start_scp()
    start_worker()
    study_uid, paths = synthetic_study(tmp_path / "ct", count=2, body_part="HEAD")
    modality = Modality(port)
    try:
        assert modality.send(paths[0]) == 0x0000
        assert not StreamDecision.objects.exists()
        assert not Study.objects.filter(study_instance_uid=study_uid, arriving=True).exists()
        assert modality.send(paths[1]) == 0x0000
        assert list(folder.iterdir()) == []  # nothing goes before the association ends and QC ran
    finally:
        modality.release()
    wait_until(lambda: len(list(folder.iterdir())) == 2, timeout=60, what="the study after QC")


def test_a_stream_cut_by_the_destination_going_away_is_completed_by_the_normal_path(
    start_scp, start_worker, storescp, tmp_path
):
    proc, dest_port, folder = storescp("NEURO")
    config_import(config(dest_port))
    _, port = start_scp()
    start_worker()
    study_uid, paths = synthetic_study(tmp_path / "ct", count=4, body_part="HEAD")
    modality = Modality(port)
    try:
        assert modality.send(paths[0]) == 0x0000
        wait_until(lambda: len(list(folder.iterdir())) == 1, timeout=30, what="the first instance forwarded")
        proc.stop()
        for path in paths[1:]:
            assert modality.send(path) == 0x0000  # receipt never waits for a destination
    finally:
        modality.release()
    study = Study.objects.get(study_instance_uid=study_uid)
    wait_until(
        lambda: Delivery.objects.filter(study=study, state=Delivery.State.PENDING).exists(),
        timeout=60,
        what="the interrupted stream recorded as pending",
    )
    storescp("NEURO", port=dest_port)
    wait_until(
        lambda: Delivery.objects.get(study=study).state == Delivery.State.DELIVERED,
        timeout=120,
        what="the rest delivered by the normal path",
    )
    delivered = DeliveryItem.objects.filter(delivery__study=study, state=DeliveryItem.State.DELIVERED)
    assert delivered.count() == 4
    assert len(list(folder.iterdir())) == 4  # the first instance was not sent again
