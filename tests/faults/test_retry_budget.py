"""A destination down past its retry budget: the delivery ends failed and the operators are told once; once
the destination is back, an operator's retry (the admin action) sends every instance exactly once."""

import time

import pytest
from django.contrib.auth.models import User
from django.test import Client

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.pipeline.services import delivery_failed_notify
from apps.reading.models import Assignment
from apps.routing.models import Delivery, DeliveryItem, Destination
from apps.routing.services import delivery_retry, delivery_send
from apps.studies.models import Stage, Study

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import storescu, synthetic_study
from ..support.pipeline import receive_study, run_steps
from ..support.processes import free_port, wait_until
from .conftest import (
    assert_each_once,
    assert_emails_sent_once,
    assert_ledger_delivered_once,
    assert_nothing_twice,
    storescp_copies,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Three attempts about a second apart: the budget is spent within seconds.
CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d, max_attempts: 3, retry_base_delay: 1,
     retry_max_delay: 1, connect_timeout: 2}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
"""


def operator() -> User:
    return User.objects.create_superuser(username="ops", email="ops@example.org", password="not-used")


def test_a_destination_down_past_its_budget_fails_once_and_an_operators_retry_delivers_each_instance_once(
    start_scp, start_worker, start_beat, storescp, tmp_path
):
    pacs_port = free_port()  # nothing listens there yet: every connection is refused
    config_import(CONFIG % {"port": pacs_port} + ACHEN_ON_SHIFT)
    ops = operator()
    _, port = start_scp()
    start_worker()
    start_beat()
    uid, paths = synthetic_study(tmp_path / "modality", count=4, body_part="HEAD")
    assert storescu(port, paths).returncode == 0

    failed = wait_until(
        lambda: Delivery.objects.filter(state=Delivery.State.FAILED).first(),
        timeout=60,
        interval=0.2,
        what="the delivery to spend its budget",
    )
    told = Notification.objects.filter(event="delivery_failed")
    wait_until(
        lambda: told.filter(state=Notification.State.SENT).count() == 2,
        timeout=30,
        interval=0.2,
        what="the operator told (in-app and email)",
    )
    assert failed.attempts == 3
    assert sorted(told.values_list("recipient__username", "channel")) == [("ops", "email"), ("ops", "in_app")]
    study = Study.objects.get(study_instance_uid=uid)
    wait_until(lambda: Study.objects.get(pk=study.pk).stage == Stage.NOTIFIED, timeout=30, what="the study read")

    pacs, _, pacs_folder = storescp("PACS", port=pacs_port)  # the destination is back
    wait_until(
        lambda: Destination.objects.get().health == "up",
        timeout=30,
        interval=0.2,
        what="the health check to see the destination back",
    )
    time.sleep(2)  # a few sweeps: a failed delivery waits for its operator, it is not resumed on its own
    assert Delivery.objects.get().state == Delivery.State.FAILED
    assert list(pacs_folder.iterdir()) == []

    client = Client()
    client.force_login(ops)
    response = client.post("/admin/routing/delivery/", {"action": "retry", "_selected_action": [failed.pk]})
    assert response.status_code == 302
    wait_until(
        lambda: Delivery.objects.get().state == Delivery.State.DELIVERED,
        timeout=30,
        interval=0.2,
        what="the retried delivery to be sent",
    )
    time.sleep(3)  # one more lease (RECONCILE_AFTER) and sweeps: a second send would show now
    assert not delivery_retry(delivery_id=failed.pk)  # a delivered delivery has nothing left to retry

    assert_each_once(storescp_copies(pacs, pacs_folder), {p.stem for p in paths})
    assert_ledger_delivered_once(instances=4, deliveries=1)
    assert Delivery.objects.get().attempts == 1  # the operator's retry starts a new budget, and took one attempt
    assert told.count() == 2  # told once about the failure, not again about the success
    assert Assignment.objects.count() == 1
    assert Notification.objects.filter(event="study_assigned").count() == 2
    assert Notification.objects.exclude(state=Notification.State.SENT).count() == 0
    assert_nothing_twice()
    assert_emails_sent_once(tmp_path / "mail")


def test_an_operators_retry_that_fails_again_tells_the_operators_again(storage, tmp_path, default_mapping):
    """Each time a delivery ends failed, its operators hear of it: a retry that fails as well is news."""
    operator()
    port = free_port()  # refused
    config_import(CONFIG % {"port": port})
    _, paths = synthetic_study(tmp_path / "modality", count=2)
    (delivery_id,) = run_steps(receive_study(storage, paths), until="route")

    def send_until_failed() -> list[int]:
        for _ in range(3):  # max_attempts
            state = delivery_send(delivery_id=delivery_id)
        assert state == Delivery.State.FAILED
        return delivery_failed_notify(delivery_id=delivery_id)

    first = send_until_failed()
    assert len(first) == 2  # in-app and email
    assert delivery_retry(delivery_id=delivery_id)
    second = send_until_failed()
    assert DeliveryItem.objects.filter(state=DeliveryItem.State.DELIVERED).count() == 0
    assert set(second).isdisjoint(first), "the second failure was folded into the first one's notification"
    assert Notification.objects.filter(event="delivery_failed").count() == 4
