"""Processes killed with SIGKILL half way through their work: nothing accepted is lost, nothing is done twice.

A killed worker's delivery is given back after its lease (RECONCILE_AFTER) and sent again by a new worker:
each instance the destination had already answered is recorded as it was answered, so only the one in
flight at the kill can arrive twice (C-STORE has no transactions; the destination keeps one copy per SOP
Instance UID). A killed SCP leaves no partial file in place, and the sender's retry is accepted.
"""

import pytest

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.pipeline.services import storage_sweep
from apps.reading.models import Assignment
from apps.routing.models import Delivery, DeliveryItem
from apps.studies.models import ReceivedInstance, Stage, Study

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import dataset_bytes, storescu, synthetic_study
from ..support.peers import StatusSCP
from ..support.processes import Process, dcmtk, kill_hard, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
"""


def test_a_worker_killed_in_the_middle_of_a_delivery_loses_nothing_and_repeats_at_most_one(
    start_scp, start_worker, start_beat, storage, tmp_path
):
    with StatusSCP(ae_title="PACS", delay=0.1) as pacs:
        config_import(CONFIG % {"port": pacs.port} + ACHEN_ON_SHIFT)
        _, port = start_scp()
        workers = start_worker()
        start_beat()
        uid, paths = synthetic_study(tmp_path / "modality", count=30, body_part="HEAD")
        assert storescu(port, paths).returncode == 0

        wait_until(lambda: len(pacs.received) >= 8, timeout=60, what="the delivery to be under way")
        deliverer = next(w for w in workers if w.name.startswith("worker-deliver"))
        kill_hard(deliverer)
        answered_before_the_kill = len(pacs.received)
        assert Delivery.objects.get().state == Delivery.State.SENDING  # left claimed by the dead worker

        start_worker(purge=False, roles=("worker-deliver",))
        study = wait_until(
            lambda: (
                Study.objects.filter(study_instance_uid=uid, stage=Stage.NOTIFIED, deliveries__state="delivered")
                .distinct()
                .first()
            ),
            timeout=90,
            interval=0.5,
            what="the study delivered by the new worker and notified",
        )

    sent = {p.stem for p in paths}
    assert set(pacs.received) == sent
    assert answered_before_the_kill < len(sent)  # the kill did land in the middle
    assert len(pacs.received) - len(sent) <= 1, f"{len(pacs.received) - len(sent)} instances sent twice"
    delivery = Delivery.objects.get()
    assert delivery.attempts == 2
    assert DeliveryItem.objects.filter(delivery=delivery, state="delivered").count() == 30
    assert Assignment.objects.filter(study=study).count() == 1
    told = Notification.objects.filter(event="study_assigned")
    assert told.count() == told.values("channel", "recipient").distinct().count() == 2  # in-app, email; once each


def test_an_scp_killed_in_the_middle_of_an_association_keeps_no_partial_file_and_takes_the_retry(
    start_scp, service_env, storage, tmp_path, log_dir
):
    scp, port = start_scp()
    uid, paths = synthetic_study(tmp_path / "modality", count=150, body_part="HEAD")
    sender = Process(
        "storescu",
        [dcmtk("storescu"), "-aec", "ROUTER", "127.0.0.1", str(port), *map(str, paths)],
        env=service_env,
        log_dir=log_dir,
    )
    wait_until(lambda: ReceivedInstance.objects.count() >= 20, timeout=60, interval=0.02, what="instances arriving")
    kill_hard(scp)
    assert sender.popen.wait(30) != 0  # the sender saw its association die
    kept = list(ReceivedInstance.objects.all())
    assert 20 <= len(kept) < 150
    originals = {p.stem: p for p in paths}
    for row in kept:  # every recorded instance is whole on disk
        assert dataset_bytes(storage / row.path) == dataset_bytes(originals[row.sop_instance_uid])

    _, port = start_scp()  # a new SCP sweeps the dead one's temp files
    assert list((storage / "tmp").iterdir()) == []
    assert storescu(port, paths).returncode == 0  # the sender's retry: everything, again

    rows = ReceivedInstance.objects.filter(study_instance_uid=uid)
    assert rows.count() == 150 and rows.values("sop_instance_uid").distinct().count() == 150
    assert list((storage / "tmp").iterdir()) == []
    # Killed between putting a file in place and committing its row, the SCP may leave one file no row
    # names (its sender got no success and sent it again): the storage sweep removes it.
    storage_sweep(older_than=0)
    files = {str(p.relative_to(storage)) for p in (storage / "instances").rglob("*.dcm")}
    assert files == set(rows.values_list("path", flat=True))
