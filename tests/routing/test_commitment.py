"""Storage commitment: the N-ACTION's dataset and the report's reading (pure), and the services against a real
pynetdicom storage commitment SCP that reports on the requesting association (no Celery, no SCP of ours)."""

import time
from datetime import timedelta

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from apps.core import clock
from apps.pipeline.gate import reading_destinations_waiting
from apps.routing import dicom_send
from apps.routing.commitment import MAX_ATTEMPTS
from apps.routing.models import CommitmentRequest, Delivery, DeliveryItem, Destination, RoutingRule, RuleCriterion
from apps.routing.retention import study_purgeable
from apps.routing.services import commitment_report, commitment_send, commitments_due, delivery_send
from apps.studies.models import RetentionPolicy, Study

from ..support.commitment_peer import CommitmentSCP
from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps
from ..support.processes import wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_the_request_lists_each_instance_under_its_transaction():
    ds = dicom_send.commitment_request("1.2.3.99", [(CT, "1.2.3.1"), (CT, "1.2.3.2")])
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, ds)
    decoded = read_dataset(DicomBytesIO(raw.getvalue()), is_implicit_VR=False, is_little_endian=True)
    assert decoded.TransactionUID == "1.2.3.99"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in decoded.ReferencedSOPSequence] == [
        (CT, "1.2.3.1"),
        (CT, "1.2.3.2"),
    ]


def _item(uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = uid
    if reason is not None:
        item.FailureReason = reason
    return item


def test_a_report_is_read_into_committed_and_failed_instances():
    info = Dataset()
    info.TransactionUID = "1.2.3.99"
    info.ReferencedSOPSequence = [_item("1.2.3.1")]
    info.FailedSOPSequence = [_item("1.2.3.2", 0x0112), _item("1.2.3.3")]
    report = dicom_send.commitment_report_parse(2, info)
    assert report.transaction_uid == "1.2.3.99"
    assert report.committed == ("1.2.3.1",)
    assert report.failed == {"1.2.3.2": 0x0112, "1.2.3.3": 0}

    info = Dataset()
    info.TransactionUID = "1.2.3.98"
    info.ReferencedSOPSequence = [_item("1.2.3.1"), _item("1.2.3.2")]
    assert dicom_send.commitment_report_parse(1, info).failed == {}


def test_a_report_without_transaction_or_of_another_event_type_is_refused():
    info = Dataset()
    info.ReferencedSOPSequence = [_item("1.2.3.1")]
    with pytest.raises(ValueError, match="Transaction UID"):
        dicom_send.commitment_report_parse(1, info)
    info.TransactionUID = "1.2.3.99"
    with pytest.raises(ValueError, match="event type 3"):
        dicom_send.commitment_report_parse(3, info)


def _routed(storage, tmp_path, port, *, count=3, commitment=True, timeout=300, assign_after=False):
    destination = Destination.objects.create(
        name="pacs",
        ae_title="COMMIT_PEER",
        host="127.0.0.1",
        port=port,
        storage_commitment=commitment,
        commitment_timeout=timeout,
    )
    rule = RoutingRule.objects.create(name="ct", priority=10, assign_after_delivery=assign_after)
    RuleCriterion.objects.create(rule=rule, attribute="modality", operator="equals", value="CT")
    rule.destinations.add(destination)
    _, paths = synthetic_study(tmp_path / "in", count=count)
    study_id = receive_study(storage, paths)
    (delivery_id,) = run_steps(study_id, until="route")
    return study_id, delivery_id, paths


def _purgeable(study_id: int) -> set[int]:
    found = study_purgeable(Study.objects.get(pk=study_id), RetentionPolicy(delivered_hours=0))
    return {f.instance_id for f in found.files} if found else set()


@pytest.mark.django_db(transaction=True)
def test_a_delivered_study_is_committed_on_the_same_association_and_only_then_purgeable(
    storage, tmp_path, default_mapping
):
    with CommitmentSCP(same_association=True) as peer:
        study_id, delivery_id, paths = _routed(storage, tmp_path, peer.port, assign_after=True)
        assert delivery_send(delivery_id=delivery_id) == Delivery.State.DELIVERED
        (request_id,) = commitments_due(delivery_id=delivery_id)
        assert _purgeable(study_id) == set()  # delivered, not committed: kept
        assert reading_destinations_waiting(study_id=study_id) == ["pacs (delivered, not yet committed)"]

        sent = commitment_send(request_id=request_id)

    assert sent.reported is not None and sent.reported.committed and not sent.reported.resend
    request = CommitmentRequest.objects.get(pk=request_id)
    assert request.state == CommitmentRequest.State.COMMITTED
    assert (request.attempts, request.committed, request.failed, request.last_status) == (1, 3, 0, 0)
    assert peer.requests == [(request.transaction_uid, [p.stem for p in paths])]
    # The peer records our answer to its report once it has it.
    assert wait_until(lambda: peer.reports, timeout=5, what="the peer's report") == [(request.transaction_uid, 1, 0)]
    assert DeliveryItem.objects.filter(committed_at__isnull=False).count() == 3
    assert len(_purgeable(study_id)) == 3
    assert reading_destinations_waiting(study_id=study_id) == []
    assert commitment_send(request_id=request_id) is None  # answered: a duplicate message does nothing


@pytest.mark.django_db(transaction=True)
def test_instances_reported_failed_are_sent_again_and_committed_by_the_next_request(storage, tmp_path, default_mapping):
    with CommitmentSCP(same_association=True) as peer:
        study_id, delivery_id, paths = _routed(storage, tmp_path, peer.port)
        peer.fail_once = {paths[0].stem}
        delivery_send(delivery_id=delivery_id)
        (first,) = commitments_due(delivery_id=delivery_id)
        sent = commitment_send(request_id=first)
        assert sent.reported.resend and not sent.reported.committed
        assert Delivery.objects.get(pk=delivery_id).state == Delivery.State.PENDING
        item = DeliveryItem.objects.get(instance__sop_instance_uid=paths[0].stem)
        assert (item.state, item.committed_at) == (DeliveryItem.State.PENDING, None)
        assert "not committed by the destination (failure reason 0x0110)" in item.error

        assert delivery_send(delivery_id=delivery_id) == Delivery.State.DELIVERED
        (second,) = commitments_due(delivery_id=delivery_id)
        assert commitment_send(request_id=second).reported.committed

    assert sorted(peer.stored) == sorted([p.stem for p in paths] + [paths[0].stem])  # only the failed one again
    assert [uids for _, uids in peer.requests] == [[p.stem for p in paths], [paths[0].stem]]
    states = dict(CommitmentRequest.objects.values_list("pk", "state"))
    assert states == {first: "partial", second: "committed"}
    assert DeliveryItem.objects.filter(committed_at__isnull=False).count() == 3
    assert len(_purgeable(study_id)) == 3


@pytest.mark.django_db(transaction=True)
def test_a_destination_that_never_reports_is_asked_again_then_fails_and_a_late_report_still_counts(
    storage, tmp_path, default_mapping
):
    with CommitmentSCP(silent=True) as peer:
        study_id, delivery_id, paths = _routed(storage, tmp_path, peer.port, timeout=60)
        delivery_send(delivery_id=delivery_id)
        (request_id,) = commitments_due(delivery_id=delivery_id)
        now = clock.now()
        first = commitment_send(request_id=request_id, now=now)
        assert (first.state, first.overdue) == ("requested", False)
        assert commitments_due(now=now + timedelta(seconds=59)) == []
        assert commitment_send(request_id=request_id, now=now + timedelta(seconds=59)) is None  # not due yet
        for attempt in range(2, MAX_ATTEMPTS + 1):
            now += timedelta(seconds=61)
            assert commitments_due(now=now) == [request_id]
            again = commitment_send(request_id=request_id, now=now)
            assert again.overdue and again.state == "requested" and not again.delivery_failed
            assert CommitmentRequest.objects.get(pk=request_id).attempts == attempt
        assert _purgeable(study_id) == set()
        now += timedelta(seconds=61)
        last = commitment_send(request_id=request_id, now=now)

    assert (last.state, last.overdue, last.delivery_failed) == ("timed_out", True, True)
    assert len(peer.requests) == MAX_ATTEMPTS
    assert {t for t, _ in peer.requests} == {CommitmentRequest.objects.get().transaction_uid}
    delivery = Delivery.objects.get(pk=delivery_id)
    assert delivery.state == Delivery.State.FAILED
    assert "storage commitment not confirmed after 3 request(s): no report" in delivery.last_error
    assert _purgeable(study_id) == set()

    late = dicom_send.CommitmentReport(
        CommitmentRequest.objects.get().transaction_uid, tuple(p.stem for p in paths), {}
    )
    assert commitment_report(report=late).committed
    assert Delivery.objects.get(pk=delivery_id).state == Delivery.State.DELIVERED
    assert len(_purgeable(study_id)) == 3
    assert commitment_report(report=late) is None  # a second report of it changes nothing


@pytest.mark.django_db(transaction=True)
def test_a_destination_without_commitment_is_not_asked_and_a_report_for_an_unknown_transaction_is_ignored(
    storage, tmp_path, default_mapping
):
    with CommitmentSCP() as peer:
        study_id, delivery_id, _ = _routed(storage, tmp_path, peer.port, commitment=False, assign_after=True)
        assert delivery_send(delivery_id=delivery_id) == Delivery.State.DELIVERED
    assert CommitmentRequest.objects.count() == 0 and peer.requests == []
    assert len(_purgeable(study_id)) == 3
    assert reading_destinations_waiting(study_id=study_id) == []
    assert commitment_report(report=dicom_send.CommitmentReport("1.2.3.4", ("1.2.3",), {})) is None


@pytest.mark.django_db(transaction=True)
def test_a_destination_that_refuses_storage_commitment_fails_the_delivery_for_an_operator(
    storage, tmp_path, default_mapping
):
    peer = CommitmentSCP()
    peer.ae.remove_supported_context("1.2.840.10008.1.20.1")  # it stores, but knows no storage commitment
    with peer:
        _, delivery_id, _ = _routed(storage, tmp_path, peer.port)
        delivery_send(delivery_id=delivery_id)
        (request_id,) = commitments_due(delivery_id=delivery_id)
        sent = commitment_send(request_id=request_id)
    assert (sent.state, sent.delivery_failed) == ("failed", True), CommitmentRequest.objects.get().error
    delivery = Delivery.objects.get(pk=delivery_id)
    assert delivery.state == Delivery.State.FAILED
    assert delivery.last_error.startswith("storage commitment refused")


@pytest.mark.django_db(transaction=True)
def test_copies_sent_through_a_de_identifying_profile_are_committed_by_the_uids_they_were_sent_with(
    storage, tmp_path, default_mapping, monkeypatch
):
    from apps.configuration.services import config_import

    monkeypatch.setenv("ROUTER_TEST_SECRET", "0123456789abcdef0123456789abcdef")
    with CommitmentSCP(same_association=True) as peer:
        config_import(
            f"""
transforms:
  - {{name: research, deidentify: true, secret: env:ROUTER_TEST_SECRET}}
destinations:
  - {{name: research, ae_title: COMMIT_PEER, host: 127.0.0.1, port: {peer.port}, transform: research,
     storage_commitment: true}}
rules:
  - {{name: ct, priority: 10, match: {{modality: [CT]}}, destinations: [research]}}
"""
        )
        _, paths = synthetic_study(tmp_path / "in", count=2)
        study_id = receive_study(storage, paths)
        (delivery_id,) = run_steps(study_id, until="route")
        assert delivery_send(delivery_id=delivery_id) == Delivery.State.DELIVERED
        (request_id,) = commitments_due(delivery_id=delivery_id)
        assert commitment_send(request_id=request_id).reported.committed

    sent_as = set(DeliveryItem.objects.values_list("sent_sop_instance_uid", flat=True))
    assert sent_as == set(peer.stored) and not sent_as & {p.stem for p in paths}  # pseudonyms, not the originals
    assert set(peer.requests[0][1]) == sent_as
    assert DeliveryItem.objects.filter(committed_at__isnull=False).count() == 2
    assert len(_purgeable(study_id)) == 2


def test_the_wait_for_a_report_on_our_association_ends_once_it_came_on_another():
    """A destination reporting on a new association to our SCP (Orthanc's way) leaves nothing to wait for on
    ours: the worker asks `answered_elsewhere` meanwhile and releases then, rather than at the end of the wait
    (a STAT-lane worker held 2 s for it kept the next STAT task waiting)."""
    looks = []

    def answered() -> bool:
        looks.append(True)
        return len(looks) >= 3  # the report came (on our SCP) while we waited

    with CommitmentSCP(silent=True) as peer:
        target = dicom_send.Target(peer.ae_title, "127.0.0.1", peer.port, "ROUTER")
        begun = time.monotonic()
        outcome = dicom_send.commit(
            target, "2.25.1", [(CT, "2.25.2")], wait_for_report=60.0, answered_elsewhere=answered
        )
        waited = time.monotonic() - begun

    assert outcome.result.kind == dicom_send.DELIVERED and outcome.report is None
    assert len(looks) == 3 and peer.requests == [("2.25.1", ["2.25.2"])]
    assert waited < 30  # ended by the third look, not by the 60 s wait (a bound, not a speed)
