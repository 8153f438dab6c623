"""Busy is not down: a destination serving one association at a time (dcmtk's storescp without --fork) takes
the TCP connection of our second association and answers it only when the first one ends."""

import os
import socket
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.routing.models import Delivery, Destination, Health, RoutingRule, RuleCriterion
from apps.routing.services import delivery_send, destinations_check

from ..conftest import require_tool
from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps
from ..support.processes import Process, free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def serial_storescp(tmp_path, log_dir):
    """storescp without --fork, 1 s per C-STORE: an association of 3 instances holds it for 3 s."""
    port = free_port()
    (tmp_path / "dest").mkdir()
    args = [require_tool("storescp"), "+xa", "--sleep-during", "1", "-aet", "DEST", "-od", str(tmp_path / "dest")]
    proc = Process("storescp-serial", [*args, str(port)], env={**os.environ, "TCP_NODELAY": "1"}, log_dir=log_dir)
    proc.wait_for_port(port)
    yield port, tmp_path / "dest"
    proc.stop()


def destination_to(port: int) -> Destination:
    destination = Destination.objects.create(
        name="serial", ae_title="DEST", host="127.0.0.1", port=port, connect_timeout=1, max_associations=2
    )
    rule = RoutingRule.objects.create(name="ct", priority=10)
    RuleCriterion.objects.create(rule=rule, attribute="modality", operator="equals", value="CT")
    rule.destinations.add(destination)
    return destination


def routed(storage, tmp_path, folder: str, count: int = 3) -> int:
    _, paths = synthetic_study(tmp_path / folder, count=count)
    return run_steps(receive_study(storage, paths), until="route")[0]


def _send_in_thread(delivery_id: int, states: dict) -> threading.Thread:
    def run() -> None:
        try:
            states[delivery_id] = delivery_send(delivery_id=delivery_id)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_it_waits_for_a_busy_destination_without_marking_it_down(
    storage, tmp_path, default_mapping, serial_storescp, caplog
):
    port, folder = serial_storescp
    destination = destination_to(port)
    first, second = routed(storage, tmp_path, "a"), routed(storage, tmp_path, "b")
    states: dict[int, str | None] = {}
    threads = [_send_in_thread(first, states), _send_in_thread(second, states)]
    time.sleep(1.5)
    assert destinations_check(interval=0) == []  # no echo while a delivery of ours is answered
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(states.values()) == ["delivered", "pending"]  # one waited 1 s for the other's association
    assert not [r.message for r in caplog.records if "unreachable" in r.message]  # never paused, even for a while
    destination.refresh_from_db()
    assert destination.health != Health.DOWN and destination.down_since is None
    assert destination.busy_limit == 1  # learned: one association at a time
    waiting = next(pk for pk, state in states.items() if state == "pending")
    assert Delivery.objects.get(pk=waiting).attempts == 0  # busy spent none of its retry budget
    assert delivery_send(delivery_id=waiting) == "delivered"  # the slot is free: as the deliver task starts it
    assert [(d.state, d.attempts, d.failures) for d in Delivery.objects.all()] == [("delivered", 1, 0)] * 2
    assert len(list(folder.iterdir())) == 6
    assert Destination.objects.get().health == Health.UP


def test_a_destination_found_busy_gets_one_association_at_a_time_for_a_while(storage, tmp_path, default_mapping):
    destination = destination_to(free_port())
    first, second = routed(storage, tmp_path, "a", count=1), routed(storage, tmp_path, "b", count=1)
    Destination.objects.filter(pk=destination.pk).update(busy_limit=1, busy_at=timezone.now())
    Delivery.objects.filter(pk=first).update(state="sending", target=destination, claimed_at=timezone.now())
    assert delivery_send(delivery_id=second) is None  # waits for the slot: no second association
    assert Delivery.objects.get(pk=second).attempts == 0
    Destination.objects.filter(pk=destination.pk).update(busy_at=timezone.now() - timedelta(hours=2))
    assert delivery_send(delivery_id=second) == "pending"  # forgotten: tried (nothing listens: refused)
    assert Destination.objects.get().health == Health.DOWN


def test_a_destination_that_takes_the_connection_and_never_answers_is_down(storage, tmp_path, default_mapping):
    with socket.socket() as silent:  # listens, never accepts: the kernel completes the TCP handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        destination_to(silent.getsockname()[1])
        due = routed(storage, tmp_path, "a", count=1)
        assert delivery_send(delivery_id=due) == "pending"
    destination = Destination.objects.get()
    assert destination.health == Health.DOWN and destination.busy_limit is None  # nothing else of ours was open
    assert Delivery.objects.get().attempts == 1


def test_the_health_check_leaves_a_destination_alone_only_while_our_delivery_to_it_is_answered(
    storage, tmp_path, default_mapping
):
    destination = destination_to(free_port())  # nothing listens: an echo would mark it down
    due = routed(storage, tmp_path, "a", count=1)
    Delivery.objects.filter(pk=due).update(state="sending", target=destination, claimed_at=timezone.now())
    assert destinations_check(interval=0) == []
    assert Destination.objects.get().health == Health.UNKNOWN
    stale = timezone.now() - timedelta(seconds=destination.dimse_timeout + 5)
    Delivery.objects.filter(pk=due).update(claimed_at=stale)  # silent: no proof of life any more
    destinations_check(interval=0)
    assert Destination.objects.get().health == Health.DOWN
