"""Delivery windows, association limits, health, alternates and rule changes, against real peers."""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from apps.notifications.models import Notification
from apps.pipeline.services import delivery_failed_notify
from apps.routing.models import Delivery, DeliveryWindow, Destination, RoutingRule, RuleCriterion
from apps.routing.services import delivery_send, destinations_check, study_route
from apps.studies.models import Study

from ..support.dicom import synthetic_study
from ..support.peers import StatusSCP
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db(transaction=True)

MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def destination(port, name="peer", **fields):
    return Destination.objects.create(name=name, ae_title="PEER", host="127.0.0.1", port=port, **fields)


def rule_to(*destinations, name="ct", **criteria):
    rule = RoutingRule.objects.create(name=name, priority=10)
    for attribute, value in (criteria or {"modality": "CT"}).items():
        RuleCriterion.objects.create(rule=rule, attribute=attribute, operator="equals", value=value)
    rule.destinations.add(*destinations)
    return rule


def routed(storage, tmp_path, *, priority="", folder="in", count=2, **kwargs):
    _, paths = synthetic_study(tmp_path / folder, count=count, priority=priority, **kwargs)
    return run_steps(receive_study(storage, paths), until="route")


def test_outside_its_delivery_windows_a_routine_study_waits_and_a_stat_study_goes(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        dest = destination(peer.port)
        DeliveryWindow.objects.create(destination=dest, weekdays="mon,tue,wed,thu,fri", start=time(19), end=time(7))
        rule_to(dest)
        routine = routed(storage, tmp_path, folder="routine")
        assert delivery_send(delivery_id=routine[0], now=MONDAY_NOON) is None
        assert Delivery.objects.get(pk=routine[0]).state == "pending"
        assert delivery_send(delivery_id=routine[0], now=datetime(2026, 11, 23, 20, 0, tzinfo=UTC)) == "delivered"
        stat = routed(storage, tmp_path, folder="stat", priority="STAT")
        assert delivery_send(delivery_id=stat[0], now=MONDAY_NOON) == "delivered"
    assert len(peer.received) == 4


def test_a_destination_at_its_association_limit_makes_the_next_delivery_wait(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        dest = destination(peer.port, max_associations=1)
        rule_to(dest)
        first = routed(storage, tmp_path, folder="a")[0]
        second = routed(storage, tmp_path, folder="b")[0]
        Delivery.objects.filter(pk=first).update(state="sending", target=dest, claimed_at=timezone.now())
        assert delivery_send(delivery_id=second) is None
        waiting = Delivery.objects.get(pk=second)
        assert (waiting.state, waiting.attempts) == ("pending", 0)  # waiting for a slot costs no attempt
        Delivery.objects.filter(pk=first).update(state="delivered")
        Delivery.objects.filter(pk=second).update(next_attempt_at=timezone.now())
        assert delivery_send(delivery_id=second) == "delivered"


def test_a_destination_down_longer_than_its_alternate_after_sends_to_the_alternate(storage, tmp_path, default_mapping):
    from ..support.processes import free_port

    with StatusSCP(ae_title="PEER") as backup:
        alternate = destination(backup.port, name="backup")
        primary = destination(free_port(), name="primary", alternate=alternate, alternate_after=60)
        rule_to(primary)
        due = routed(storage, tmp_path)
        assert delivery_send(delivery_id=due[0]) == "pending"  # refused: the primary is now down
        assert Destination.objects.get(name="primary").health == "down"
        Destination.objects.filter(name="primary").update(down_since=timezone.now() - timedelta(seconds=61))
        Delivery.objects.update(next_attempt_at=timezone.now())
        assert delivery_send(delivery_id=due[0]) == "delivered"
    delivery = Delivery.objects.get()
    assert (delivery.destination.name, delivery.target.name) == ("primary", "backup")
    assert len(backup.received) == 2


def test_the_health_check_marks_destinations_and_releases_paused_deliveries(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        dest = destination(peer.port)
        Destination.objects.filter(pk=dest.pk).update(health="down", down_since=timezone.now())
        rule_to(dest)
        due = routed(storage, tmp_path)
        Delivery.objects.filter(pk=due[0]).update(next_attempt_at=timezone.now() + timedelta(hours=1))
        assert destinations_check() == [dest.pk]
        assert Destination.objects.get().health == "up"
        assert Delivery.objects.get().next_attempt_at <= timezone.now()
    assert destinations_check(interval=0) == []  # the peer is gone now
    assert Destination.objects.get().health == "down"


def test_a_rule_change_takes_effect_on_the_next_study_without_a_restart(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        first, second = destination(peer.port, name="first"), destination(peer.port, name="second")
        rule = rule_to(first)
        routed(storage, tmp_path, folder="a")
        rule.destinations.set([second])
        rule.save()  # what the admin does on every save; criteria and destinations ride on it
        routed(storage, tmp_path, folder="b")
    assert [s.routing_decision.destinations for s in Study.objects.order_by("id")] == [["first"], ["second"]]


def test_a_rule_on_any_dicom_keyword_reads_the_header(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        dest = destination(peer.port)
        rule = RoutingRule.objects.create(name="by manufacturer", priority=10)
        RuleCriterion.objects.create(
            rule=rule, attribute="keyword", keyword="Manufacturer", operator="contains", value="GE"
        )
        rule.destinations.add(dest)
        assert len(routed(storage, tmp_path)) == 1  # CT_small was made on a GE scanner
    assert Study.objects.get().routing_decision.matched_rules == ["by manufacturer"]


def test_operators_are_told_once_when_a_delivery_fails(storage, tmp_path, default_mapping):
    User.objects.create(username="ops", email="ops@example.org", is_staff=True)
    User.objects.create(username="reader", email="reader@example.org")
    with StatusSCP([0xC000, 0xC000]) as peer:
        rule_to(destination(peer.port))
        due = routed(storage, tmp_path, patient_name="Secret^Patient")
        assert delivery_send(delivery_id=due[0]) == "failed"
    ids = delivery_failed_notify(delivery_id=due[0])
    assert delivery_failed_notify(delivery_id=due[0]) == ids
    sent = Notification.objects.all()
    assert sorted(sent.values_list("recipient__username", "channel")) == [("ops", "email"), ("ops", "in_app")]
    assert "Secret" not in sent[0].body and "Retry it from the admin" in sent[0].body


def test_route_is_unchanged_by_a_second_call(storage, tmp_path, default_mapping):
    with StatusSCP() as peer:
        rule_to(destination(peer.port))
        _, paths = synthetic_study(tmp_path / "in", count=1)
        study_id = receive_study(storage, paths)
        assert len(run_steps(study_id, until="route")) == 1
        assert study_route(study_id=study_id) == []
