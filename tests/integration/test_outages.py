"""Faults for real: the database unreachable during C-STORE, the broker unreachable at association end."""

import os
import shutil

import pytest
from django.db import connection
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.reading.models import Assignment
from apps.routing.models import DeliveryItem
from apps.studies.models import Instance, ReceivedInstance, Study

from ..support.dicom import storescu, synthetic_study
from ..support.processes import Process, free_port, wait_until
from ..support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def send_one(port: int, path) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_database_unreachable_during_c_store_answers_a700_and_the_retry_succeeds(
    start_scp, service_env, storage, tmp_path
):
    db = connection.settings_dict
    proxy = TcpProxy(int(db.get("PORT") or 5432)).start()
    env = {**service_env, "DATABASE_URL": f"postgres://{db.get('USER') or 'root'}@127.0.0.1:{proxy.port}/{db['NAME']}"}
    _, port = start_scp(env)
    _, paths = synthetic_study(tmp_path / "in", count=2)
    try:
        assert send_one(port, paths[0]) == 0x0000
        proxy.cut()
        assert send_one(port, paths[1]) == 0xA700  # never success while the row cannot be committed
        assert send_one(port, paths[1]) == 0xA700
        proxy.restore()
        assert send_one(port, paths[1]) == 0x0000
    finally:
        proxy.cut()
    assert ReceivedInstance.objects.count() == 2
    assert len(list((storage / "instances").rglob("*.dcm"))) == 2  # nothing orphaned by the refusals
    assert list((storage / "tmp").iterdir()) == []


CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %d}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
radiologists:
  - username: achen
    email: achen@example.org
    specialty: neuroradiology
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
"""


@pytest.fixture
def private_redis(tmp_path, log_dir):
    """A Redis of this test's own, so it can be stopped and started again without touching anyone else's."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (make test installs it)", pytrace=False)
    port = free_port()
    started: list[Process] = []

    def start() -> Process:
        proc = Process(
            f"redis{len(started)}",
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            env=dict(os.environ),
            log_dir=log_dir,
        )
        started.append(proc)
        proc.wait_for_port(port)
        return proc

    start.port = port
    yield start
    for proc in started:
        proc.stop()


def test_broker_unreachable_at_association_end_the_instances_are_processed_once_it_is_back(
    start_scp, start_worker, start_beat, storescp, service_env, private_redis, tmp_path
):
    _, pacs_port, pacs_folder = storescp("PACS")
    config_import(CONFIG % pacs_port)
    redis = private_redis()
    env = {**service_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/0"}
    scp, port = start_scp(env)
    start_worker(env)
    start_beat(env)

    redis.stop()  # the broker goes away, taking any queued message with it (no persistence)
    uid, paths = synthetic_study(tmp_path / "in", count=4)
    result = storescu(port, paths)
    assert result.returncode == 0, result.stderr  # custody does not depend on the broker
    assert ReceivedInstance.objects.filter(state="received").count() == 4
    # The SCP's hand-over has failed for good (not merely still retrying) before the broker returns.
    scp.wait_for_log("could not enqueue", timeout=30)
    assert not Study.objects.filter(stage="notified").exists()

    private_redis()  # back, empty: only the database knows what is left to do

    def done():
        study = Study.objects.filter(study_instance_uid=uid).first()
        delivered = DeliveryItem.objects.filter(state="delivered").count()
        return study is not None and study.stage == "notified" and delivered == 4

    wait_until(done, timeout=90, interval=0.5, what="the reconciler to process the study after the outage")
    assert Instance.objects.count() == 4
    assert len(list(pacs_folder.iterdir())) == 4  # each instance delivered once
    assert Assignment.objects.count() == 1
    assert Notification.objects.count() == 2
    assert DeliveryItem.objects.count() == 4
