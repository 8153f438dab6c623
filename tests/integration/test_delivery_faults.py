"""Delivery on real services when the destination misbehaves: stopped mid-study, and association limits
held across two worker processes."""

import threading
import time

import pytest
from pynetdicom import evt
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import Verification

from apps.configuration.services import config_import
from apps.routing.models import Delivery, DeliveryItem
from apps.studies.models import Study

from ..support.dicom import dataset_bytes, storescu, synthetic_study
from ..support.peers import StatusSCP
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1, retry_max_delay: 2,
     max_attempts: 50, max_associations: %(limit)d}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
"""


def test_a_destination_stopped_while_a_50_instance_study_arrives_gets_every_instance_once(
    start_scp, start_worker, start_beat, storescp, tmp_path
):
    pacs, pacs_port, pacs_folder = storescp("PACS")
    config_import(CONFIG % {"port": pacs_port, "limit": 2})
    _, port = start_scp()
    start_worker()
    start_beat()
    pacs.stop()  # the PACS goes away before the study arrives
    uid, paths = synthetic_study(tmp_path / "modality", count=50)
    assert storescu(port, paths).returncode == 0

    def paused():
        delivery = Delivery.objects.filter(study__study_instance_uid=uid).first()
        return delivery is not None and delivery.attempts >= 1 and delivery.destination.health == "down"

    wait_until(paused, timeout=60, interval=0.5, what="the delivery to fail and the destination to pause")
    assert list(pacs_folder.iterdir()) == []
    storescp("PACS", port=pacs_port)  # back on the same port, same folder

    def delivered():
        delivery = Delivery.objects.filter(study__study_instance_uid=uid).first()
        return delivery is not None and delivery.state == "delivered"

    wait_until(delivered, timeout=90, interval=0.5, what="the delivery to complete after the PACS came back")
    received = sorted(pacs_folder.iterdir())
    assert len(received) == 50
    # storescp -uf names files by SOP Instance UID and overwrites a second copy, saying so in its log
    assert "already exists, overwriting" not in "".join(p.read_text() for p in (tmp_path / "logs").glob("storescp*"))
    assert {dataset_bytes(p) for p in received} == {dataset_bytes(p) for p in paths}
    assert DeliveryItem.objects.filter(state="delivered").count() == 50
    assert Study.objects.get(study_instance_uid=uid).num_instances == 50


class CountingSCP(StatusSCP):
    """A peer that is slow to answer and records how many associations it held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.open: set[int] = set()
        self.most = 0
        self._count_lock = threading.Lock()

    def _opened(self, event) -> None:
        if all(cx.abstract_syntax == Verification for cx in event.assoc.accepted_contexts):
            return  # a health check's C-ECHO, not a delivery
        with self._count_lock:
            self.open.add(id(event.assoc))
            self.most = max(self.most, len(self.open))

    def _over(self, event) -> None:
        # An association is over once its release is requested (the requestor cannot open its next one
        # before: EVT_RELEASED fires only after our reply, racing that next one), or once it is aborted.
        if event.event is evt.EVT_ACSE_RECV and not (
            isinstance(event.primitive, A_RELEASE) and event.primitive.result is None
        ):
            return
        with self._count_lock:
            self.open.discard(id(event.assoc))

    def _store(self, event) -> int:
        time.sleep(0.05)
        return super()._store(event)

    def __enter__(self) -> "CountingSCP":
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._store),
                (evt.EVT_ESTABLISHED, self._opened),
                (evt.EVT_ACSE_RECV, self._over),
                (evt.EVT_ABORTED, self._over),
                (evt.EVT_CONN_CLOSE, self._over),
            ],
        )
        return self


def test_two_workers_never_hold_more_associations_to_a_destination_than_its_limit(
    start_scp, start_worker, start_beat, tmp_path
):
    with CountingSCP() as peer:
        config_import(CONFIG % {"port": peer.port, "limit": 2})
        _, port = start_scp()
        start_worker()
        start_worker(purge=False)  # two worker processes, two children each: four could send at once
        start_beat()
        for n in range(8):
            _, paths = synthetic_study(tmp_path / f"study{n}", count=4)
            assert storescu(port, paths).returncode == 0
        wait_until(
            lambda: Delivery.objects.filter(state="delivered").count() == 8,
            timeout=90,
            interval=0.5,
            what="eight deliveries",
        )
    assert len(peer.received) == 32
    assert 1 <= peer.most <= 2
