"""The storage lifecycle for real: a simulated month on a small tmpfs through the SCP's own custody function,
a purge killed with SIGKILL half way, and two purges at once (real processes)."""

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from apps.ingest.services import OUT_OF_RESOURCES, SUCCESS, Origin, instance_receive
from apps.ingest.storage import Spool
from apps.routing.models import Delivery, Destination, RoutingRule, RuleCriterion
from apps.routing.retention import purge_plan, storage_purge
from apps.studies.models import FileState, Instance, RetentionPolicy, Stage, Study
from apps.studies.services import study_register

from ..support.dicom import dataset_bytes, received_into, synthetic_study
from ..support.peers import StatusSCP
from ..support.pipeline import receive_study, run_steps
from ..support.processes import python_manage, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

T0 = datetime(2026, 10, 1, 0, 0, tzinfo=UTC)
MIB = 2**20
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def small_disk(tmp_path, settings):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {mounted.stderr.decode().strip()}")
    settings.STORAGE_ROOT = folder
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def clock(monkeypatch):
    state = {"now": T0}
    monkeypatch.setattr("apps.core.clock.now", lambda: state["now"])
    return state


def study_received(spool: Spool, folder, count: int = 5) -> tuple[int | None, list[int]]:
    """One study of `count` CT instances through the SCP's custody function; returns its id and statuses."""
    uid, paths = synthetic_study(folder, count=count)
    origin = Origin(calling_ae_title="MODALITY", called_ae_title="ROUTER", peer_address="127.0.0.1")
    statuses = []
    for path in paths:
        received = received_into(
            spool, dataset_bytes(path), sop_class_uid=CT_IMAGE, sop_instance_uid=path.stem, transfer_syntax=EXPLICIT_LE
        )
        try:
            outcome = instance_receive(
                spool=spool,
                received=received,
                transfer_syntax=EXPLICIT_LE,
                sop_class_uid=CT_IMAGE,
                sop_instance_uid=path.stem,
                origin=origin,
            )
        finally:
            received.discard()
        statuses.append(outcome.status)
        path.unlink()
    study_id = study_register(study_instance_uid=uid).pk if SUCCESS in statuses else None
    return study_id, statuses


def sent(study_id: int) -> None:
    from apps.routing.services import delivery_send

    for delivery_id in run_steps(study_id, until="route"):
        delivery_send(delivery_id=delivery_id)


def test_a_month_on_a_small_disk_never_refuses_while_purgeable_data_exists(
    small_disk, tmp_path, default_mapping, clock, settings
):
    """30 days, a study of 5 CT instances a day (four a day in a busy week), the default 72 h retention, on a
    4 MiB tmpfs whose SCP refuses below 512 KiB free: the busy week needs emergency purges. A held, a
    protected, a failed and a long-pending study are kept throughout. The clock ticks every 12 hours."""
    settings.STORAGE_MIN_FREE_BYTES = MIB // 2  # emergency threshold: 2 MiB
    RetentionPolicy.objects.create()
    spool = Spool(small_disk)
    with StatusSCP() as pacs:
        rule = RoutingRule.objects.create(name="ct", priority=10)
        RuleCriterion.objects.create(rule=rule, attribute="modality", operator="equals", value="CT")
        rule.destinations.add(
            Destination.objects.create(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
        )
        kept: dict[str, int] = {}
        refused, peak_used, purged_during = 0, 0, 0
        for step in range(30 * 2):
            clock["now"] = T0 + timedelta(hours=12 * step)
            day = step // 2
            for _ in range(4 if 15 <= day < 20 else 1 - step % 2):
                study_id, statuses = study_received(spool, tmp_path / "in")
                if OUT_OF_RESOURCES in statuses:
                    refused += 1
                    assert not purge_plan(policy=RetentionPolicy.current(), now=clock["now"], emergency=True), (
                        f"day {day}: the SCP refused while purgeable data existed"
                    )
                if study_id is None:
                    continue
                special = _special(step, study_id, kept)
                if special == "failed":
                    pacs.statuses = [0xC000] * 5
                if special == "pending":  # also to an archive that is down all month: it retries, never ends
                    down = Destination.objects.create(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=1)
                    rule.destinations.add(down)
                    rule.save()  # a new version of the rules (the admin saves the rule too)
                if special != "held":
                    sent(study_id)
                if special == "pending":
                    rule.destinations.remove(down)
                    rule.save()
                # At association end the SCP asks for the purge when space is below the emergency threshold.
                if spool.free_bytes() < 2 * MIB:
                    purged_during += storage_purge().files
                peak_used = max(peak_used, _used(small_disk))
            storage_purge()  # Beat's tick

    assert refused == 0
    assert peak_used <= 4 * MIB - MIB // 2
    assert purged_during > 0  # the busy week needed emergency purges
    for what, study_id in kept.items():
        instances = Instance.objects.filter(study_id=study_id)
        assert instances.count() == 5 and all((small_disk / i.path).exists() for i in instances), what
        assert set(instances.values_list("file_state", flat=True)) == {FileState.STORED}, what
    delivered_early = Study.objects.filter(received_at__lt=T0 + timedelta(days=25)).exclude(pk__in=kept.values())
    assert not Instance.objects.filter(study__in=delivered_early, file_state=FileState.STORED).exists()
    assert Study.objects.count() == Instance.objects.count() // 5  # rows stay


def _special(step: int, study_id: int, kept: dict[str, int]) -> str:
    """Mark the few studies whose files must stay all month."""
    roles = {2: "held", 4: "protected", 6: "failed", 8: "pending"}
    role = roles.get(step)
    if role is None or role in kept:
        return ""
    kept[role] = study_id
    if role == "held":
        run_steps(study_id, until="classify")
        Study.objects.filter(pk=study_id).update(stage=Stage.HELD)
    elif role == "protected":
        Study.objects.filter(pk=study_id).update(protected=True)
    return role


def _used(folder) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@pytest.fixture
def delivered_studies(service_env, storage, tmp_path, default_mapping, monkeypatch):
    """12 studies of 10 instances, delivered to a real peer a month ago: every file may be purged."""
    month_ago = datetime.now(UTC) - timedelta(days=30)
    monkeypatch.setattr("apps.core.clock.now", lambda: month_ago)
    with StatusSCP() as pacs:
        destination = Destination.objects.create(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
        rule = RoutingRule.objects.create(name="ct", priority=10)
        RuleCriterion.objects.create(rule=rule, attribute="modality", operator="equals", value="CT")
        rule.destinations.add(destination)
        for n in range(12):
            _, paths = synthetic_study(tmp_path / f"in{n}", count=10)
            sent(receive_study(storage, paths))
    monkeypatch.undo()
    assert Delivery.objects.filter(state=Delivery.State.DELIVERED).count() == 12
    return sum(Instance.objects.values_list("size", flat=True))


def purge_process(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(python_manage("purge", "--json", *args), env=env, stdout=subprocess.PIPE, text=True)


def assert_nothing_unmarked_is_missing(storage) -> None:
    for state, path in Instance.objects.values_list("file_state", "path"):
        if not (storage / path).exists():
            assert state != FileState.STORED, f"{path} is gone but its row says stored"


def test_a_purge_killed_half_way_loses_nothing_and_the_next_finishes_it(service_env, storage, delivered_studies):
    proc = purge_process(service_env)
    try:
        wait_until(
            lambda: Instance.objects.filter(file_state=FileState.PURGED).exists(),
            timeout=60,
            interval=0.01,
            what="the purge removing files",
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    assert Instance.objects.filter(file_state=FileState.STORED).exists(), "killed too late to test anything"
    assert_nothing_unmarked_is_missing(storage)
    again = purge_process(service_env)
    report = json.loads(again.communicate(timeout=120)[0])

    assert again.returncode == 0 and report["files"] > 0
    assert set(Instance.objects.values_list("file_state", flat=True)) == {FileState.PURGED}
    assert not list((storage / "instances").glob("*.dcm"))


def test_two_purges_at_once_remove_each_file_once_and_keep_a_late_instance(
    service_env, storage, delivered_studies, tmp_path
):
    first, second = purge_process(service_env), purge_process(service_env)
    study = Study.objects.order_by("-id").first()  # oldest first: this one goes last
    _, paths = synthetic_study(tmp_path / "late", count=1, study_uid=study.study_instance_uid)
    run_steps(receive_study(storage, paths), until="persist")  # a late instance, while both purge
    reports = [json.loads(p.communicate(timeout=120)[0]) for p in (first, second)]

    assert first.returncode == 0 and second.returncode == 0
    late = Instance.objects.get(sop_instance_uid=paths[0].stem)
    assert late.file_state == FileState.STORED and (storage / late.path).exists()
    assert_nothing_unmarked_is_missing(storage)
    purged = Instance.objects.filter(file_state=FileState.PURGED)
    assert sum(r["files"] for r in reports) == purged.count() >= 110  # each file counted once
    assert sum(r["bytes"] for r in reports) == sum(purged.values_list("size", flat=True))
