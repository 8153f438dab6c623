"""A delivery that takes longer to send than its lease (RECONCILE_AFTER: 120 s in production, 3 s here) is
still being sent by a live worker: the deliveries-due sweeper must not give it to a second worker."""

import time

import pytest

from apps.configuration.services import config_import
from apps.routing.models import Delivery

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import storescu, synthetic_study
from ..support.processes import wait_until
from .conftest import SlowSCP, assert_each_once, assert_ledger_delivered_once, assert_nothing_twice

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
"""


def test_a_send_longer_than_the_lease_is_not_handed_to_a_second_worker(
    start_scp, start_worker, start_beat, service_env, tmp_path
):
    assert float(service_env["RECONCILE_AFTER"]) == 3
    # 40 instances at 0.15 s each: a healthy, slow destination that needs 6 s, twice the lease.
    with SlowSCP(delay=0.15) as pacs:
        config_import(CONFIG % {"port": pacs.port} + ACHEN_ON_SHIFT)
        _, port = start_scp()
        start_worker()
        start_beat()
        _, paths = synthetic_study(tmp_path / "modality", count=40, body_part="HEAD")
        assert storescu(port, paths).returncode == 0
        wait_until(
            lambda: Delivery.objects.filter(state=Delivery.State.DELIVERED).exists(),
            timeout=60,
            interval=0.2,
            what="the delivery",
        )
        time.sleep(3)  # a second sender, if any, finishes meanwhile
        received, detail = pacs.copies(), pacs.duplicates()
        associations = {assoc for _, assoc, _ in pacs.arrivals}

    assert_each_once(received, {p.stem for p in paths}, detail)
    assert len(associations) == 1, f"{len(associations)} associations sent the one delivery"
    assert Delivery.objects.get().attempts == 1
    assert_ledger_delivered_once(instances=40, deliveries=1)
    assert_nothing_twice()
