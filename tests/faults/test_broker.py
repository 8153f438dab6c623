"""Redis killed and started again, empty (no persistence: every queued message is lost), while studies
arrive and while deliveries are on the wire. The database is the source of truth: Beat's sweepers
(reconcile, deliveries-due) bring every study to its end, each instance reaches its destination once, and
nobody is assigned or notified twice.

Workers run under a Supervisor that starts again any that exits, as docker-compose's restart policy does
in production, so each test checks what the system did; its last check is that no worker died at all."""

import threading
import time

import pytest

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.reading.models import Assignment
from apps.routing.models import Delivery
from apps.studies.models import ReceivedInstance, Stage, Study

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import storescu, synthetic_study
from ..support.processes import wait_until
from .conftest import (
    SlowSCP,
    Supervisor,
    assert_each_once,
    assert_emails_sent_once,
    assert_ledger_delivered_once,
    assert_nothing_twice,
    storescp_copies,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1, retry_max_delay: 2,
     max_attempts: 50}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
"""


def studies(folder, name: str, studies: int, instances: int) -> tuple[set[str], list]:
    """`studies` new head CT studies of `instances` each: (their SOP Instance UIDs, their files)."""
    files = []
    for n in range(studies):
        _, paths = synthetic_study(folder / f"{name}{n}", count=instances, body_part="HEAD")
        files += paths
    return {p.stem for p in files}, files


def all_done(count: int) -> bool:
    """Every study notified, delivered, and its notifications sent (a study reaches `notified` when its
    notifications are created: sending them is a task of its own)."""
    notified = Study.objects.filter(stage=Stage.NOTIFIED).count()
    return (
        notified == count
        and not Delivery.objects.exclude(state=Delivery.State.DELIVERED).exists()
        and not Notification.objects.exclude(state=Notification.State.SENT).exists()
    )


def assert_workflow_once(study_count: int, tmp_path) -> None:
    assert Assignment.objects.count() == study_count  # one each, none twice
    assert Assignment.objects.values("study").distinct().count() == study_count
    told = Notification.objects.filter(event="study_assigned")
    assert told.count() == 2 * study_count  # in-app and email, once per assignment
    assert Notification.objects.exclude(state=Notification.State.SENT).count() == 0
    assert_nothing_twice()
    assert_emails_sent_once(tmp_path / "mail")


def test_redis_killed_while_a_multi_study_batch_arrives_every_study_still_reaches_its_end_once(
    start_scp, start_worker, start_beat, storescp, broker_env, private_redis, tmp_path
):
    pacs, pacs_port, pacs_folder = storescp("PACS")
    config_import(CONFIG % {"port": pacs_port} + ACHEN_ON_SHIFT)
    scp, port = start_scp(broker_env)
    supervisor = Supervisor(start_worker, broker_env, start_worker(broker_env))
    start_beat(broker_env)
    before, before_files = studies(tmp_path, "before", 2, 3)
    during, during_files = studies(tmp_path, "during", 4, 15)
    after, after_files = studies(tmp_path, "after", 1, 3)

    assert storescu(port, before_files).returncode == 0  # their chains are published, and under way
    sending: dict = {}
    sender = threading.Thread(target=lambda: sending.update(result=storescu(port, during_files)))
    sender.start()
    wait_until(
        lambda: ReceivedInstance.objects.count() >= len(before) + 10,
        timeout=30,
        interval=0.005,
        what="the batch to be half way",
    )
    private_redis.kill()  # in the middle of the batch's association, and of the first studies' chains
    received_at_kill = ReceivedInstance.objects.count()
    sender.join(60)
    assert sending["result"].returncode == 0, sending["result"].stderr  # custody does not need the broker
    assert received_at_kill < len(before) + len(during), "the batch had ended before Redis went"
    scp.wait_for_log("could not enqueue", timeout=30)  # the batch's hand-over is lost: only the database knows
    time.sleep(2)  # Beat ticks into the void meanwhile

    private_redis.start()  # back on the same port, empty
    assert storescu(port, after_files).returncode == 0
    study_count = 2 + 4 + 1
    wait_until(
        lambda: supervisor.check() or all_done(study_count),
        timeout=120,
        interval=0.5,
        what="every study delivered and notified",
    )

    sent = before | during | after
    assert_each_once(storescp_copies(pacs, pacs_folder), sent)
    assert_ledger_delivered_once(instances=len(sent), deliveries=study_count)
    assert_workflow_once(study_count, tmp_path)
    assert supervisor.deaths() == [], "a broker outage must not kill a worker"


def deliveries_through_an_outage(
    start_scp, start_worker, start_beat, broker_env, private_redis, tmp_path, *, study_count: int, instances: int
):
    """Studies to a destination slow enough (0.1 s per C-STORE) that all their deliveries are on the wire when
    Redis is killed; Redis comes back empty 2 s later. Returns the SOP Instance UIDs sent, the copies the
    destination received of each, when the duplicates (if any) arrived, and the workers' supervisor."""
    (tmp_path / "pacs").mkdir()
    with SlowSCP(delay=0.1, folder=tmp_path / "pacs") as pacs:
        config_import(CONFIG % {"port": pacs.port} + ACHEN_ON_SHIFT)
        _, port = start_scp(broker_env)
        supervisor = Supervisor(start_worker, broker_env, start_worker(broker_env))
        start_beat(broker_env)
        sent, files = studies(tmp_path, "study", study_count, instances)
        assert storescu(port, files).returncode == 0

        def on_the_wire() -> bool:
            sending = Delivery.objects.filter(state=Delivery.State.SENDING).count()
            return len(pacs.received) >= 2 * study_count and sending == study_count

        wait_until(on_the_wire, timeout=60, interval=0.01, what="every delivery in flight")
        private_redis.kill()
        answered_at_kill = len(pacs.received)
        time.sleep(2)
        private_redis.start()
        wait_until(
            lambda: supervisor.check() or all_done(study_count),
            timeout=90,
            interval=0.5,
            what="every delivery done after the outage",
        )
        received, detail = pacs.copies(), pacs.duplicates()
    assert answered_at_kill < len(sent)  # the kill did land with the deliveries under way
    assert sorted(p.stem for p in (tmp_path / "pacs").iterdir()) == sorted(sent)
    return sent, received, detail, supervisor


def test_redis_killed_while_deliveries_fill_the_deliver_worker_every_instance_arrives_once(
    start_scp, start_worker, start_beat, broker_env, private_redis, tmp_path
):
    """Two deliveries in flight: both of worker-deliver's slots are busy when the connection drops. Each
    delivery takes ~1 s, under its lease (RECONCILE_AFTER, 3 s here): only the broker's fault counts. The
    sends in progress may finish (their rows say what was answered): nothing is sent twice."""
    sent, received, detail, supervisor = deliveries_through_an_outage(
        start_scp, start_worker, start_beat, broker_env, private_redis, tmp_path, study_count=2, instances=10
    )
    assert_each_once(received, sent, detail)
    assert_ledger_delivered_once(instances=len(sent), deliveries=2)
    assert_workflow_once(2, tmp_path)
    assert supervisor.deaths() == [], "a broker outage must not kill a worker"


def test_redis_killed_while_one_delivery_is_on_the_wire_the_deliver_worker_lives_on(
    start_scp, start_worker, start_beat, broker_env, private_redis, tmp_path
):
    """One delivery in flight: worker-deliver holds an unacknowledged message and still waits for more on
    its free slot when the connection drops. It must reconnect once Redis is back, not exit."""
    sent, received, detail, supervisor = deliveries_through_an_outage(
        start_scp, start_worker, start_beat, broker_env, private_redis, tmp_path, study_count=1, instances=20
    )
    assert_each_once(received, sent, detail)
    assert_ledger_delivered_once(instances=len(sent), deliveries=1)
    assert_workflow_once(1, tmp_path)
    assert supervisor.deaths() == [], "a broker outage must not kill a worker"
