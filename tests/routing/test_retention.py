"""The storage lifecycle: what the purge may remove and when, with an injected clock, real files and a real
pynetdicom peer as the destination."""

from datetime import UTC, datetime, timedelta

import pytest

from apps.audit.models import AuditEvent
from apps.configuration.services import config_export, config_import
from apps.routing.models import Delivery, DeliveryItem, Destination, RoutingRule, RuleCriterion
from apps.routing.retention import (
    FilesPurged,
    StudyBusy,
    purge_plan,
    storage_purge,
    study_delete,
)
from apps.routing.services import delivery_retry, delivery_send, study_reroute
from apps.studies.models import (
    FileState,
    Instance,
    PurgeRun,
    RetentionPolicy,
    Stage,
    StorageEmergency,
    Study,
)
from apps.studies.services import instances_purge_mark, study_reject

from ..support.dicom import synthetic_study
from ..support.peers import StatusSCP
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
PLENTY = 10**15  # free bytes: far above any threshold


@pytest.fixture
def clock(monkeypatch):
    """The injected clock: `clock(t)` makes every service's now `t`."""
    state = {"now": T0}
    monkeypatch.setattr("apps.core.clock.now", lambda: state["now"])

    def set_now(moment: datetime) -> datetime:
        state["now"] = moment
        return moment

    return set_now


@pytest.fixture
def peer():
    with StatusSCP() as scp:
        yield scp


def destination(name: str, port: int, **extra) -> Destination:
    fields = {"max_attempts": 1, **extra}
    return Destination.objects.create(name=name, ae_title=name.upper()[:16], host="127.0.0.1", port=port, **fields)


def route_ct_to(*destinations: Destination) -> None:
    rule = RoutingRule.objects.create(name="ct", priority=10)
    RuleCriterion.objects.create(rule=rule, attribute="modality", operator="equals", value="CT")
    rule.destinations.add(*destinations)


def receive(storage, tmp_path, *, count=3, modality="CT", study_uid=None) -> int:
    _, paths = synthetic_study(
        tmp_path / f"in-{len(list(tmp_path.iterdir()))}", count=count, modality=modality, study_uid=study_uid
    )
    return receive_study(storage, paths)


def deliver(study_id: int) -> list[str]:
    """The pipeline up to routing, then each delivery sent once; returns the deliveries' states."""
    due = run_steps(study_id, until="route")
    return [delivery_send(delivery_id=d) for d in due]


def stored(study_id: int) -> list[Instance]:
    return list(Instance.objects.filter(study_id=study_id, file_state=FileState.STORED))


def files_exist(storage, study_id: int) -> list[bool]:
    return [(storage / i.path).exists() for i in Instance.objects.filter(study_id=study_id)]


def purge(at: datetime, free=lambda: PLENTY, **kwargs):
    return storage_purge(now=at, free=free, **kwargs)


def test_it_purges_a_delivered_study_once_its_retention_passed(storage, tmp_path, default_mapping, clock, peer):
    route_ct_to(destination("pacs", peer.port))
    study_id = receive(storage, tmp_path)
    assert deliver(study_id) == [Delivery.State.DELIVERED]

    assert purge(T0 + 71 * HOUR).files == 0
    assert all(files_exist(storage, study_id))

    report = purge(T0 + 73 * HOUR)

    assert report.files == 3 and set(report.bytes_freed) == {"delivered"}
    assert report.bytes_freed["delivered"] == sum(i.size for i in Instance.objects.filter(study_id=study_id))
    assert not any(files_exist(storage, study_id))
    instances = Instance.objects.filter(study_id=study_id)
    assert {(i.file_state, i.purge_reason, i.purged_at) for i in instances} == {
        (FileState.PURGED, "delivered", T0 + 73 * HOUR)
    }
    assert Study.objects.filter(pk=study_id).exists()  # rows stay
    assert PurgeRun.objects.first().bytes_freed == report.bytes_freed  # the newest run


def test_it_never_purges_held_protected_pending_or_failed_files(storage, tmp_path, default_mapping, clock, peer):
    down = destination("down", 1)  # nothing listens on port 1: the delivery stays pending (retries)
    down.max_attempts = 5
    down.save()
    route_ct_to(destination("pacs", peer.port), down)
    pending = receive(storage, tmp_path)
    deliver(pending)
    protected = receive(storage, tmp_path)
    Destination.objects.filter(name="down").update(port=peer.port)
    deliver(protected)
    Study.objects.filter(pk=protected).update(protected=True)
    peer.default = 0xC000  # refused for good: failed
    failed = receive(storage, tmp_path)
    deliver(failed)
    held = receive(storage, tmp_path)
    run_steps(held, until="classify")
    Study.objects.filter(pk=held).update(stage=Stage.HELD)

    report = purge(T0 + 365 * 24 * HOUR, free=lambda: 0)  # a year on, in an emergency

    assert report.files == 0 and report.emergency
    for study_id in (pending, protected, failed, held):
        assert all(files_exist(storage, study_id)), study_id
    assert Delivery.objects.get(study_id=pending, destination=down).state == Delivery.State.PENDING
    assert Delivery.objects.get(study_id=failed, destination__name="pacs").state == Delivery.State.FAILED


def test_failed_files_go_only_when_failed_hours_are_set(storage, tmp_path, default_mapping, clock, peer):
    route_ct_to(destination("pacs", peer.port))
    peer.default = 0xC000
    study_id = receive(storage, tmp_path)
    assert deliver(study_id) == [Delivery.State.FAILED]
    assert purge(T0 + 1000 * HOUR).files == 0

    RetentionPolicy.objects.create(failed_hours=24)  # (the migration's row: flushed by transactional tests)

    assert purge(T0 + 25 * HOUR).bytes_freed.keys() == {"failed"}
    assert not any(files_exist(storage, study_id))


def test_unrouted_and_rejected_studies_keep_their_own_retention(storage, tmp_path, default_mapping, clock, peer):
    route_ct_to(destination("pacs", peer.port))
    unrouted = receive(storage, tmp_path, modality="MR")  # no rule for MR
    run_steps(unrouted, until="route")
    rejected = receive(storage, tmp_path)
    run_steps(rejected, until="classify")
    Study.objects.filter(pk=rejected).update(stage=Stage.HELD)
    study_reject(study_id=rejected, user="reviewer", now=T0 + HOUR)

    assert purge(T0 + 700 * HOUR).files == 0
    report = purge(T0 + 722 * HOUR)

    assert report.bytes_freed.keys() == {"unrouted", "rejected"}
    assert not any(files_exist(storage, unrouted)) and not any(files_exist(storage, rejected))


def test_an_emergency_purges_oldest_first_until_space_is_back_and_tells_once(
    storage, tmp_path, default_mapping, clock, peer, settings
):
    settings.STORAGE_MIN_FREE_BYTES = 1000
    route_ct_to(destination("pacs", peer.port))
    studies = []
    for day in range(3):
        clock(T0 + day * 24 * HOUR)
        studies.append(receive(storage, tmp_path))
        deliver(studies[-1])
    size = sum(i.size for i in stored(studies[0]))
    space = {"free": 4000 - size}  # threshold 4 x 1000: one study short

    def free() -> int:
        return space["free"] + sum(i.size for i in Instance.objects.filter(file_state=FileState.PURGED))

    first = purge(T0 + 50 * HOUR, free=free)  # every retention still running

    assert first.emergency and first.studies == [studies[0]]  # the oldest, and only what was needed
    assert stored(studies[1]) and stored(studies[2])
    assert first.episode_started is not None and StorageEmergency.objects.get().ended_at is None
    space["free"] -= 10 * size
    second = purge(T0 + 51 * HOUR, free=free)
    assert second.studies == [studies[1], studies[2]] and second.episode_started is None  # told once
    space["free"] += 100 * size
    purge(T0 + 52 * HOUR, free=free)
    assert StorageEmergency.objects.get().ended_at == T0 + 52 * HOUR


def test_a_study_delivered_to_one_of_two_destinations_keeps_its_files_until_the_second_succeeds(
    storage, tmp_path, default_mapping, clock, peer
):
    down = destination("archive", 1, max_attempts=5)
    route_ct_to(destination("pacs", peer.port), down)
    study_id = receive(storage, tmp_path)
    assert sorted(deliver(study_id)) == [Delivery.State.DELIVERED, Delivery.State.PENDING]

    assert purge(T0 + 100 * HOUR, free=lambda: 0).files == 0
    assert all(files_exist(storage, study_id))

    Destination.objects.filter(pk=down.pk).update(port=peer.port, health="up", down_since=None)  # back
    clock(T0 + 101 * HOUR)
    archive = Delivery.objects.get(destination=down)
    assert delivery_send(delivery_id=archive.pk, now=T0 + 101 * HOUR) == "delivered"
    assert purge(T0 + 172 * HOUR).files == 0  # 72 hours from the last delivery, not the first
    assert purge(T0 + 174 * HOUR).files == 3


def test_a_late_instance_during_a_purge_is_kept_and_delivered(storage, tmp_path, default_mapping, clock, peer):
    route_ct_to(destination("pacs", peer.port))
    study_id = receive(storage, tmp_path)
    deliver(study_id)
    uid = Study.objects.get(pk=study_id).study_instance_uid
    plan = purge_plan(policy=RetentionPolicy.current(), now=T0 + 80 * HOUR)
    assert [p.study_id for p in plan] == [study_id]

    clock(T0 + 80 * HOUR)
    late = receive(storage, tmp_path, count=1, study_uid=uid)  # arrives between the plan and the purge
    assert late == study_id
    run_steps(study_id, until="persist")
    report = purge(T0 + 80 * HOUR)

    assert report.files == 0  # the study is back in the pipeline: nothing of it goes now
    deliver(study_id)
    assert purge(T0 + 81 * HOUR).files == 0  # its last activity moved
    clock(T0 + 200 * HOUR)
    assert purge(T0 + 200 * HOUR).files == 4
    assert DeliveryItem.objects.filter(delivery__study_id=study_id, state="delivered").count() == 4
    assert len(peer.received) == 4


def test_a_purge_killed_after_marking_is_finished_by_the_next(storage, tmp_path, default_mapping, clock, peer):
    route_ct_to(destination("pacs", peer.port))
    study_id = receive(storage, tmp_path)
    deliver(study_id)
    ids = [i.pk for i in stored(study_id)]
    instances_purge_mark(instance_ids=ids, reason="delivered", now=T0 + 80 * HOUR)  # ... then killed

    assert all(files_exist(storage, study_id))  # marked: no row names a missing file unmarked
    report = purge(T0 + 81 * HOUR)

    assert report.files == 3 and report.bytes_freed == {"delivered": sum(i.size for i in Instance.objects.all())}
    assert not any(files_exist(storage, study_id))
    assert set(Instance.objects.values_list("file_state", flat=True)) == {FileState.PURGED}


def test_an_operators_retry_or_reroute_of_a_purged_study_says_so(storage, tmp_path, default_mapping, clock, peer):
    RetentionPolicy.objects.create(failed_hours=1)
    route_ct_to(destination("pacs", peer.port))
    peer.default = 0xA700
    failed = receive(storage, tmp_path)
    deliver(failed)
    unrouted = receive(storage, tmp_path, modality="MR")
    run_steps(unrouted, until="route")
    purge(T0 + 1000 * HOUR)

    with pytest.raises(FilesPurged, match="files purged on 2026-12-14 00:00"):
        delivery_retry(delivery_id=Delivery.objects.get(study_id=failed).pk)
    with pytest.raises(FilesPurged, match="files purged on"):
        study_reroute(study_id=unrouted)
    assert Delivery.objects.get(study_id=failed).state == Delivery.State.FAILED


def test_a_purged_instance_received_again_has_its_file_back(storage, tmp_path, default_mapping, clock, peer):
    from apps.studies.services import received_instance_second_copy

    route_ct_to(destination("pacs", peer.port))
    study_id = receive(storage, tmp_path, count=1)
    deliver(study_id)
    purge(T0 + 80 * HOUR)
    instance = Instance.objects.get(study_id=study_id)
    (storage / "instances" / "again.dcm").write_bytes(b"the same instance, sent again")

    assert received_instance_second_copy(sop_instance_uid=instance.sop_instance_uid, path="instances/again.dcm")

    instance.refresh_from_db()
    assert (instance.file_state, instance.path, instance.purge_reason) == (FileState.STORED, "instances/again.dcm", "")


def test_delete_by_hand_removes_files_and_rows_and_is_refused_in_flight(storage, tmp_path, default_mapping, peer):
    route_ct_to(destination("pacs", peer.port))
    study_id = receive(storage, tmp_path)
    due = run_steps(study_id, until="route")
    paths = [storage / i.path for i in Instance.objects.filter(study_id=study_id)]
    Delivery.objects.filter(pk=due[0]).update(state=Delivery.State.SENDING)

    with pytest.raises(StudyBusy):
        study_delete(study_id=study_id, reason="sent in error")
    assert all(p.exists() for p in paths)

    Delivery.objects.filter(pk=due[0]).update(state=Delivery.State.PENDING)
    sizes = sum(p.stat().st_size for p in paths)
    with pytest.raises(ValueError, match="reason"):
        study_delete(study_id=study_id, reason=" ")
    removed = study_delete(study_id=study_id, reason="sent in error")

    assert removed == sizes
    assert not any(p.exists() for p in paths)
    assert not Study.objects.filter(pk=study_id).exists() and not Instance.objects.exists()
    assert not Delivery.objects.exists()


def test_the_admin_deletes_a_study_with_a_reason_and_audits_it(storage, tmp_path, default_mapping, admin_client):
    study_id = receive(storage, tmp_path)
    run_steps(study_id, until="route")
    uid = Study.objects.get(pk=study_id).study_instance_uid
    url = "/admin/studies/study/"
    form = {"action": "delete_study", "_selected_action": [study_id]}

    asked = admin_client.post(url, form)
    assert asked.status_code == 200 and b"Why these studies are deleted" in asked.content
    assert Study.objects.filter(pk=study_id).exists()

    done = admin_client.post(url, {**form, "confirm": "1", "reason": "wrong patient, sent in error"}, follow=True)

    assert done.status_code == 200 and not Study.objects.filter(pk=study_id).exists()
    event = AuditEvent.objects.get(action="admin.studies.delete")
    assert event.study_instance_uid == uid and "wrong patient, sent in error" in event.detail
    assert event.username == "admin"


def test_the_retention_policy_is_part_of_the_configuration_document(db):
    config_import("retention: {delivered_hours: 24, failed_hours: 240, emergency_free_bytes: 5000000000}\n")

    policy = RetentionPolicy.current()
    assert (policy.delivered_hours, policy.failed_hours, policy.unrouted_hours) == (24, 240, 720)
    assert "delivered_hours: 24" in config_export()
    assert not config_import(config_export()).changed
    with pytest.raises(Exception, match="retention: unknown key"):
        config_import("retention: {kept_hours: 1}\n")


def test_the_purge_command_dry_run_removes_nothing(storage, tmp_path, default_mapping, peer, clock):
    import json

    from django.core.management import call_command

    route_ct_to(destination("pacs", peer.port))
    study_id = receive(storage, tmp_path)
    deliver(study_id)
    clock(T0 + 100 * HOUR)
    from io import StringIO

    out = StringIO()
    call_command("purge", "--dry-run", "--json", stdout=out)

    report = json.loads(out.getvalue())
    assert report["dry_run"] and report["files"] == 3 and report["studies"] == [study_id]
    assert all(files_exist(storage, study_id)) and not PurgeRun.objects.exists()
    out = StringIO()
    call_command("purge", stdout=out)
    assert "Purged 3 files" in out.getvalue() and "delivered" in out.getvalue()


def test_a_given_up_delivery_counts_as_delivered(storage, tmp_path, default_mapping, clock, peer):
    from apps.routing.services import delivery_give_up

    route_ct_to(destination("pacs", peer.port))
    peer.default = 0xC000
    study_id = receive(storage, tmp_path)
    [state] = deliver(study_id)
    assert purge(T0 + 100 * HOUR).files == 0  # failed: kept for the operator

    assert delivery_give_up(delivery_id=Delivery.objects.get(study_id=study_id).pk)

    assert purge(T0 + 100 * HOUR).bytes_freed.keys() == {"delivered"}
    assert state == Delivery.State.FAILED


def test_a_destinations_own_retention_replaces_the_default_and_the_longest_wins(
    storage, tmp_path, default_mapping, clock, peer
):
    route_ct_to(destination("archive", peer.port, retention_hours=6))
    archived = receive(storage, tmp_path)
    deliver(archived)
    RoutingRule.objects.get(name="ct").destinations.add(destination("workstation", peer.port, retention_hours=200))
    RoutingRule.objects.get(name="ct").save()  # a new version of the rules
    both = receive(storage, tmp_path)
    deliver(both)

    assert purge(T0 + 7 * HOUR).studies == [archived]
    assert purge(T0 + 150 * HOUR).files == 0  # 200 hours for what also went to the workstation
    assert purge(T0 + 201 * HOUR).studies == [both]


def test_metrics_show_what_is_stored_and_purged(storage, tmp_path, default_mapping, clock, peer):
    from django.test import Client

    route_ct_to(destination("pacs", peer.port))
    study_id = receive(storage, tmp_path)
    deliver(study_id)
    size = sum(i.size for i in Instance.objects.filter(study_id=study_id))
    text = Client().get("/metrics").content.decode()
    assert f"router_storage_bytes {float(size)}" in text
    assert "router_storage_oldest_file_age_seconds" in text

    purge(T0 + 80 * HOUR)

    text = Client().get("/metrics").content.decode()
    assert "router_storage_bytes 0.0" in text
    assert f'router_storage_purged_bytes_total{{reason="delivered"}} {float(size)}' in text
    assert "router_storage_purgeable_bytes 0.0" in text
