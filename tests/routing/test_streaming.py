"""Forwarding on receipt, the services without Celery: the decision on the first instance, the stream over
one association, the check after QC, and the rules an on-receipt rule may not have."""

import re

import pytest

from apps.configuration.services import ConfigError, config_import
from apps.routing.models import Delivery, DeliveryItem, RoutingRule, RuleCriterion, StreamDecision
from apps.routing.services import delivery_stream, study_stream_decide
from apps.studies.models import Study

from ..support.dicom import synthetic_study
from ..support.peers import StatusSCP
from ..support.pipeline import receive, run_steps

pytestmark = pytest.mark.django_db(transaction=True)


def rules(port: int, *, after_qc: str = "") -> str:
    return f"""
destinations:
  - {{name: fast, ae_title: PEER, host: 127.0.0.1, port: {port}}}
  - {{name: other, ae_title: PEER, host: 127.0.0.1, port: {port}}}
rules:
  - {{name: stream-ct, priority: 10, forward_mode: on_receipt, match: {{modality: [CT]}}, destinations: [fast]}}
{after_qc}
"""


def arrived(storage, paths) -> Study:
    """The study's rows as the SCP leaves them while it still receives (no persist has run)."""
    for path in paths:
        uid = receive(storage, path)
    study, _ = Study.objects.get_or_create(study_instance_uid=uid)
    return study


def test_the_on_receipt_rules_decide_on_the_first_instance_and_the_stream_sends_each_instance_once(storage, tmp_path):
    with StatusSCP() as peer:
        config_import(rules(peer.port))
        _, paths = synthetic_study(tmp_path / "ct", count=3)
        study = arrived(storage, paths)

        due = study_stream_decide(study_id=study.pk)
        assert study_stream_decide(study_id=study.pk) == due  # decided once
        (delivery_id,) = due
        assert delivery_stream(delivery_id=delivery_id) == Delivery.State.DELIVERED  # not arriving: sends, ends

        assert len(peer.received) == 3
        items = DeliveryItem.objects.filter(delivery_id=delivery_id)
        assert {i.state for i in items} == {DeliveryItem.State.DELIVERED} and items.count() == 3
        assert StreamDecision.objects.get(study=study).matched_rules == ["stream-ct"]
        # The study goes on through its chain; the route after QC finds nothing left to send there.
        assert run_steps(study.pk, until="route") == []
        assert len(peer.received) == 3


def test_a_decision_after_qc_that_drops_a_streamed_destination_is_recorded_as_a_discrepancy(storage, tmp_path):
    exclusive = (
        "  - {name: all-to-other, priority: 20, exclusive: true, match: {modality: [CT]}, destinations: [other]}"
    )
    with StatusSCP() as peer:
        config_import(rules(peer.port, after_qc=exclusive))
        _, paths = synthetic_study(tmp_path / "ct", count=2)
        study = arrived(storage, paths)
        (delivery_id,) = study_stream_decide(study_id=study.pk)
        delivery_stream(delivery_id=delivery_id)
        due = run_steps(study.pk, until="route")
    decision = StreamDecision.objects.get(study=study)
    assert decision.discrepancy == ["fast"] and decision.checked_at is not None
    assert [Delivery.objects.get(pk=d).destination.name for d in due] == ["other"]


def streaming(storage, tmp_path, peer, *, count: int) -> tuple[Study, int]:
    """A study still arriving (the SCP's rows written, its association open) and its stream's delivery."""
    config_import(rules(peer.port))
    _, paths = synthetic_study(tmp_path / "ct", count=count)
    study = arrived(storage, paths)
    Study.objects.filter(pk=study.pk).update(arriving=True)
    (delivery_id,) = study_stream_decide(study_id=study.pk)
    return study, delivery_id


def test_a_stream_ends_at_once_when_nothing_arrives_and_the_study_is_no_longer_arriving(storage, tmp_path):
    with StatusSCP() as peer:
        study, delivery_id = streaming(storage, tmp_path, peer, count=1)
        Study.objects.filter(pk=study.pk).update(arriving=False)
        assert delivery_stream(delivery_id=delivery_id) == Delivery.State.DELIVERED
        assert delivery_stream(delivery_id=delivery_id) is None  # delivered: nothing to claim


def test_what_the_studys_own_persist_wrote_while_the_stream_waited_is_sent_when_the_study_ends(
    storage, tmp_path, monkeypatch
):
    """The race a full benchmark run met: the stream looks, finds nothing yet; the study's chain persists its
    rows and the association ends; the stream's last look finds them on the ledger. It sends them then (it
    used to go round without sending, for ever)."""
    from apps.routing import stream
    from apps.studies.services import study_persist

    real = stream.study_persist_arrived
    calls = []

    def racing(*, study_id: int, limit: int | None = None) -> int:
        calls.append(study_id)
        assert len(calls) < 50, "the stream goes round without sending"
        if len(calls) == 2:  # meanwhile, in the chain's worker: persist, and the association has ended
            study_persist(study_id=study_id)
            Study.objects.filter(pk=study_id).update(arriving=False)
            return 0
        return 0 if len(calls) == 1 else real(study_id=study_id, limit=limit)

    monkeypatch.setattr(stream, "study_persist_arrived", racing)
    with StatusSCP() as peer:
        _, delivery_id = streaming(storage, tmp_path, peer, count=2)

        assert delivery_stream(delivery_id=delivery_id, poll=0.001) == Delivery.State.DELIVERED
        assert len(peer.received) == 2


def test_an_on_receipt_rule_cannot_read_what_only_the_whole_study_says():
    document = """
destinations:
  - {name: fast, ae_title: PEER, host: 127.0.0.1, port: 104}
rules:
  - name: sr-only
    forward_mode: on_receipt
    criteria: [{attribute: sop_class, operator: in, value: 1.2.840.10008.5.1.4.1.1.88.11}]
    destinations: [fast]
"""
    with pytest.raises(ConfigError, match=re.escape("sop_class needs the whole study")):
        config_import(document)
    assert not RoutingRule.objects.exists()
    config_import(document.replace("forward_mode: on_receipt", "forward_mode: after_qc"))
    assert RuleCriterion.objects.get().attribute == "sop_class"
