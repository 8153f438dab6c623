"""Deliveries against a real pynetdicom peer that answers the statuses we script."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.routing import dicom_send
from apps.routing.models import Delivery, DeliveryItem, Destination, RoutingDecision, RoutingRule, RuleCriterion
from apps.routing.services import deliveries_due, delivery_retry, delivery_send, retry_delay
from apps.studies.models import Stage, Study

from ..support.dicom import dataset_bytes, synthetic_study
from ..support.peers import StatusSCP
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x0000, "delivered"),
        (0xB000, "warning"),
        (0xB006, "warning"),
        (0xB007, "warning"),
        (0xA700, "transient"),
        (0xA7FF, "transient"),
        (0xA900, "permanent"),
        (0xC000, "permanent"),
        (0x0122, "permanent"),
        (0x0124, "permanent"),
    ],
)
def test_statuses_are_classified(status, kind):
    assert dicom_send.classify_status(status) == kind


def test_retry_delays_grow_and_are_capped():
    destination = Destination(retry_base_delay=10, retry_max_delay=60)
    delays = [retry_delay(destination, n) for n in range(1, 8)]
    assert 8 <= delays[0] <= 12
    assert all(d <= 72 for d in delays)
    assert delays[5] >= 48


def routed_study(storage, tmp_path, port, *, count=3):
    destination = Destination.objects.create(name="peer", ae_title="PEER", host="127.0.0.1", port=port, max_attempts=3)
    rule = RoutingRule.objects.create(name="ct", priority=10)
    RuleCriterion.objects.create(rule=rule, attribute="modality", operator="equals", value="CT")
    rule.destinations.add(destination)
    _, paths = synthetic_study(tmp_path / "in", count=count)
    study_id = receive_study(storage, paths)
    due = run_steps(study_id, until="route")
    return study_id, due, paths


def test_a_study_is_delivered_byte_for_byte(storage, tmp_path, default_mapping):
    (tmp_path / "peer").mkdir()
    with StatusSCP(folder=tmp_path / "peer") as peer:
        study_id, due, paths = routed_study(storage, tmp_path, peer.port)
        assert len(due) == 1
        assert delivery_send(delivery_id=due[0]) == Delivery.State.DELIVERED
    assert sorted(peer.received) == sorted(p.stem for p in paths)
    for path in paths:
        assert dataset_bytes(tmp_path / "peer" / path.name) == dataset_bytes(path)
    assert DeliveryItem.objects.filter(state="delivered").count() == 3


def test_a_transient_failure_is_retried_and_only_what_is_missing_is_sent(storage, tmp_path, default_mapping):
    with StatusSCP([0x0000, 0xA700, 0x0000]) as peer:
        _, due, _ = routed_study(storage, tmp_path, peer.port)
        assert delivery_send(delivery_id=due[0]) == Delivery.State.PENDING
        delivery = Delivery.objects.get()
        assert delivery.next_attempt_at > timezone.now()
        assert delivery.items.filter(state="pending").count() == 1
        assert delivery_send(delivery_id=due[0]) == Delivery.State.DELIVERED
    assert len(peer.received) == 3
    assert len(set(peer.received)) == 3


def test_a_permanent_failure_fails_at_once_and_an_operator_retry_sends_only_that(storage, tmp_path, default_mapping):
    with StatusSCP([0x0000, 0xC000, 0x0000]) as peer:
        _, due, _ = routed_study(storage, tmp_path, peer.port)
        assert delivery_send(delivery_id=due[0]) == Delivery.State.FAILED
        delivery = Delivery.objects.get()
        assert delivery.attempts == 1
        assert delivery.items.get(state="failed").status == 0xC000
        assert delivery_retry(delivery_id=delivery.pk)
        assert delivery_send(delivery_id=delivery.pk) == Delivery.State.DELIVERED
    assert len(peer.received) == 3


def test_a_warning_counts_as_delivered_and_is_kept(storage, tmp_path, default_mapping):
    with StatusSCP([0xB000, 0x0000, 0x0000]) as peer:
        _, due, _ = routed_study(storage, tmp_path, peer.port)
        assert delivery_send(delivery_id=due[0]) == Delivery.State.DELIVERED
    assert DeliveryItem.objects.get(state="warning").status == 0xB000


def test_an_unreachable_destination_pauses_and_its_deliveries_fail_after_the_budget(storage, tmp_path, default_mapping):
    from ..support.processes import free_port

    _, due, _ = routed_study(storage, tmp_path, free_port())
    assert delivery_send(delivery_id=due[0]) == "pending"
    assert "could not connect" in Delivery.objects.get().last_error
    destination = Destination.objects.get()
    assert (destination.health, destination.down_since is not None) == ("down", True)
    states = []
    for _ in range(2):  # paused: attempts are counted without opening an association
        Delivery.objects.update(next_attempt_at=timezone.now())
        states.append(delivery_send(delivery_id=due[0]))
    assert states == ["pending", "failed"]
    delivery = Delivery.objects.get()
    assert (delivery.attempts, delivery.target_id) == (3, destination.pk)
    assert "destination unreachable since" in delivery.last_error


def test_a_second_message_for_the_same_delivery_does_nothing(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        _, due, _ = routed_study(storage, tmp_path, peer.port)
        assert delivery_send(delivery_id=due[0]) == "delivered"
        assert delivery_send(delivery_id=due[0]) is None
    assert len(peer.received) == 3


def test_late_instances_go_to_the_same_destinations(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        study_id, due, paths = routed_study(storage, tmp_path, peer.port, count=2)
        delivery_send(delivery_id=due[0])
        RoutingRule.objects.all().delete()  # the decision stands even if the rules change
        _, late = synthetic_study(tmp_path / "late", count=1, study_uid=Study.objects.get().study_instance_uid)
        receive_study(storage, late)
        due = run_steps(study_id, until="route")
        assert due == [Delivery.objects.get().pk]
        assert delivery_send(delivery_id=due[0]) == "delivered"
    assert len(peer.received) == 3
    assert RoutingDecision.objects.get().destinations == ["peer"]


def test_a_study_no_rule_matches_is_unrouted_and_goes_on(storage, tmp_path, default_mapping):
    _, paths = synthetic_study(tmp_path / "in", count=1, modality="MR")
    study_id = receive_study(storage, paths)
    assert run_steps(study_id, until="route") == []
    study = Study.objects.get()
    assert study.stage == Stage.ROUTED
    assert study.routing_decision.unrouted


def test_the_sweeper_leases_what_it_enqueues_and_gives_back_abandoned_sends(storage, tmp_path, default_mapping):
    from ..support.processes import free_port

    _, due, _ = routed_study(storage, tmp_path, free_port())
    assert deliveries_due(lease=60) == due
    assert deliveries_due(lease=60) == []  # leased
    Delivery.objects.update(state="sending", claimed_at=timezone.now() - timedelta(seconds=120))
    assert deliveries_due(lease=60) == due  # a worker died mid-send: given back


@pytest.mark.parametrize(("result", "state", "attempts"), [(0x01, "failed", 1), (0x02, "pending", 1)])
def test_a_rejected_association_fails_at_once_when_permanent_and_is_retried_when_transient(
    storage, tmp_path, default_mapping, result, state, attempts
):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    with StatusSCP() as peer:
        holder = None
        if result == 0x01:
            peer.ae.require_calling_aet = ["SOMEONE_ELSE"]  # rejected-permanent, calling AE not recognised
        else:
            peer.ae.maximum_associations = 1  # held below: the next is rejected-transient, local limit exceeded
            ae = AE(ae_title="HOLDER")
            ae.add_requested_context(Verification)
            holder = ae.associate("127.0.0.1", peer.port, ae_title="PEER")
        _, due, _ = routed_study(storage, tmp_path, peer.port)
        assert delivery_send(delivery_id=due[0]) == state
        if holder is not None:
            holder.release()
    delivery = Delivery.objects.get()
    assert delivery.attempts == attempts
    assert "association rejected" in delivery.last_error
    assert peer.received == []
