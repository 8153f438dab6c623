"""Storage commitment and assign after verified delivery, on real services: runscp (which receives the
destinations' N-EVENT-REPORTs), Celery workers and Beat on Redis, PostgreSQL; Orthanc, a pynetdicom storage
commitment SCP and dcmtk's storescp as destinations, dcmtk's storescu as the modality."""

import pytest
from django.contrib.auth import get_user_model

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.reading.models import Assignment
from apps.routing.models import CommitmentRequest, Delivery, DeliveryItem
from apps.routing.retention import DONE_STAGES, study_purgeable
from apps.studies.models import RetentionPolicy, Stage, Study

from ..support.commitment_peer import CommitmentSCP
from ..support.dicom import storescu, synthetic_study
from ..support.orthanc import Orthanc
from ..support.processes import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: %(ae)s, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1, max_attempts: 50,
     storage_commitment: true, commitment_timeout: %(timeout)d}
rules:
  - {name: CT to pacs, match: {modality: CT}, destinations: [pacs]}
"""


def _purgeable(uid: str) -> int:
    found = study_purgeable(Study.objects.get(study_instance_uid=uid), RetentionPolicy(delivered_hours=0))
    return len(found.files) if found else 0


def _committed(uid: str) -> int:
    return DeliveryItem.objects.filter(
        delivery__study__study_instance_uid=uid, committed_at__isnull=False, state=DeliveryItem.State.DELIVERED
    ).count()


def test_orthanc_commits_a_delivered_study_and_the_purge_may_then_take_it(
    start_scp, start_worker, service_env, tmp_path, log_dir
):
    scp_port = free_port()
    # Orthanc sends its report to the modality the N-ACTION's calling AE title names: the router's SCP.
    orthanc = Orthanc(
        tmp_path / "orthanc",
        log_dir=log_dir,
        extra={"DicomModalities": {"router": ["ROUTER", "127.0.0.1", scp_port]}},
    )
    try:
        config_import(CONFIG % {"ae": orthanc.ae_title, "port": orthanc.dicom_port, "timeout": 60})
        start_scp(port=scp_port)
        start_worker()
        uid, paths = synthetic_study(tmp_path / "modality", count=4, body_part="HEAD")
        assert storescu(scp_port, paths).returncode == 0

        wait_until(lambda: _committed(uid) == 4, timeout=60, what="Orthanc to commit the four instances")
        request = CommitmentRequest.objects.get()
        assert (request.state, request.committed, request.failed, request.attempts) == ("committed", 4, 0, 1)
        assert request.answered_at >= request.sent_at
        assert Delivery.objects.get().state == Delivery.State.DELIVERED
        assert orthanc.instance_count() == 4
        wait_until(lambda: Study.objects.get(study_instance_uid=uid).stage in DONE_STAGES, timeout=30, what="the chain")
        assert _purgeable(uid) == 4
    finally:
        orthanc.stop()


def test_instances_a_peer_reports_failed_are_sent_again_and_committed_on_the_second_round(
    start_scp, start_worker, service_env, tmp_path
):
    scp_port = free_port()
    uid, paths = synthetic_study(tmp_path / "modality", count=4, body_part="HEAD")
    failing = {paths[1].stem, paths[3].stem}
    with CommitmentSCP(report_to=("127.0.0.1", scp_port, "ROUTER"), fail_once=failing) as peer:
        config_import(CONFIG % {"ae": peer.ae_title, "port": peer.port, "timeout": 60})
        start_scp(port=scp_port)
        start_worker()
        assert storescu(scp_port, paths).returncode == 0

        wait_until(lambda: _committed(uid) == 4, timeout=60, what="every instance to be committed")
        wait_until(lambda: len(peer.reports) == 2, timeout=10, what="the peer to have both its reports answered")

    assert sorted(peer.stored) == sorted([p.stem for p in paths] + sorted(failing))  # the failed ones twice
    assert [sorted(uids) for _, uids in peer.requests] == [sorted(p.stem for p in paths), sorted(failing)]
    assert [(event_type, status) for _, event_type, status in peer.reports] == [(2, 0x0000), (1, 0x0000)]
    states = list(CommitmentRequest.objects.order_by("id").values_list("state", "committed", "failed"))
    assert states == [("partial", 2, 2), ("committed", 2, 0)]
    assert Delivery.objects.get().state == Delivery.State.DELIVERED


def test_a_peer_that_never_reports_tells_staff_is_asked_again_by_the_sweeper_and_the_purge_waits(
    start_scp, start_worker, start_beat, service_env, tmp_path
):
    get_user_model().objects.create_user("operator", "ops@example.org", "x", is_staff=True)
    scp_port = free_port()
    uid, paths = synthetic_study(tmp_path / "modality", count=3, body_part="HEAD")
    with CommitmentSCP(silent=True) as peer:
        config_import(CONFIG % {"ae": peer.ae_title, "port": peer.port, "timeout": 2})
        start_scp(port=scp_port)
        start_worker()
        start_beat()
        assert storescu(scp_port, paths).returncode == 0

        wait_until(lambda: len(peer.requests) >= 2, timeout=60, what="the sweeper to ask again")
        told = wait_until(
            lambda: list(Notification.objects.filter(event="commitment_overdue")),
            timeout=30,
            what="staff to be told",
        )
    assert {n.recipient.username for n in told} == {"operator"}
    assert "sent no report within 2 s" in told[0].body
    assert len({t for t, _ in peer.requests}) == 1  # the same transaction, asked again
    request = CommitmentRequest.objects.get()
    assert request.attempts >= 2 and request.state in ("requested", "timed_out")
    assert _committed(uid) == 0
    assert _purgeable(uid) == 0


ASSIGN_CONFIG = """
destinations:
  - {name: reading-pacs, ae_title: READING, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1,
     retry_max_delay: 2, max_attempts: 100}
rules:
  - {name: CT head to reading, match: {modality: CT, body_part: HEAD}, destinations: [reading-pacs],
     assign_after_delivery: true}
radiologists:
  - username: achen
    name: A. Chen
    email: achen@example.org
    specialty: neuroradiology
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
"""


def test_a_study_is_assigned_only_once_its_reading_destination_has_it(
    start_scp, start_worker, start_beat, storescp, service_env, tmp_path
):
    pacs_port = free_port()  # nothing listens there yet: the reading PACS is down
    config_import(ASSIGN_CONFIG % {"port": pacs_port})
    _, scp_port = start_scp()
    start_worker()
    start_beat()
    uid, paths = synthetic_study(tmp_path / "modality", count=3, body_part="HEAD")
    assert storescu(scp_port, paths).returncode == 0

    def waiting():
        study = Study.objects.filter(study_instance_uid=uid).first()
        return study if study and study.stage == Stage.ROUTED and study.stage_detail else None

    study = wait_until(waiting, timeout=30, what="the study to wait for its reading destination")
    assert study.stage_detail.startswith("waiting for delivery to reading-pacs (")
    # Several delivery attempts fail while it waits, and it is still not assigned.
    wait_until(lambda: Delivery.objects.get().attempts >= 2, timeout=30, what="delivery attempts")
    assert Assignment.objects.count() == 0
    assert Study.objects.get(pk=study.pk).stage == Stage.ROUTED

    storescp("READING", port=pacs_port)
    assignment = wait_until(lambda: Assignment.objects.first(), timeout=60, what="the assignment")
    delivery = Delivery.objects.get()
    assert delivery.state == Delivery.State.DELIVERED
    assert delivery.delivered_at <= assignment.assigned_at
    assert assignment.radiologist.user.username == "achen"
    wait_until(lambda: Study.objects.get(pk=study.pk).stage == Stage.NOTIFIED, timeout=30, what="the reader told")
