"""Storage lifecycle: which files may go, the purge that removes them, and deleting a study by hand.

A file goes only once nothing more is to be done with it: every delivery of it ended in success (or an
operator gave it up), its study is neither held for QC nor protected, and its retention since the study's
last activity (receipt, delivery, routing decision, rejection) has passed. A file with a pending or
failed delivery (unless failed files have a retention), one delivered to a destination with storage
commitment that has not committed to it, a study held or still in the pipeline, and quarantined data are
never purged. Below the emergency threshold, purgeable files go oldest first
whatever their retention, before the SCP ever has to refuse. Rows stay: a purge removes files and marks
their instances (studies owns that primitive); this module decides, as it knows the delivery ledger.
"""

import logging
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, Max, Min, OuterRef

from apps.core import clock
from apps.studies.models import (
    FileState,
    Instance,
    PurgeReason,
    PurgeRun,
    ReceivedInstance,
    RetentionPolicy,
    Stage,
    StorageEmergency,
    Study,
)
from apps.studies.services import instance_files_remove, instances_purge_mark

from .models import Delivery, DeliveryItem, Destination, RoutingDecision

logger = logging.getLogger(__name__)

# Stages after which the pipeline has nothing more to do with a study's files (a late instance sets the
# study back to PERSISTED, and so out of these, under the study's lock).
DONE_STAGES = (Stage.ROUTED, Stage.UNASSIGNED, Stage.ASSIGNED, Stage.NOTIFIED, Stage.REJECTED)
OPEN_DELIVERIES = (Delivery.State.PENDING, Delivery.State.SENDING)
# An item held by its transform is kept like a failed one: an operator may mend the profile and send it.
UNDELIVERED = (DeliveryItem.State.PENDING, DeliveryItem.State.FAILED, DeliveryItem.State.HELD)


class FilesPurged(Exception):
    """An operator asked for something that needs files the purge removed."""


class StudyBusy(Exception):
    """The study cannot be deleted now: a delivery of it is on the wire."""


@dataclass(frozen=True)
class PurgeableFile:
    instance_id: int
    size: int
    reason: str
    due_at: datetime


@dataclass(frozen=True)
class PurgeableStudy:
    study_id: int
    since: datetime  # the study's last activity; emergencies take the oldest first
    files: tuple[PurgeableFile, ...]


@dataclass
class PurgeReport:
    dry_run: bool
    emergency: bool = False
    files: int = 0
    bytes_freed: dict[str, int] = field(default_factory=dict)
    studies: list[int] = field(default_factory=list)
    purgeable_bytes: int = 0  # left that an emergency could still purge
    free_bytes: int | None = None
    episode_started: StorageEmergency | None = None

    def add(self, freed: dict[str, int], files: int, study_id: int | None = None) -> None:
        if study_id is not None and files:
            self.studies.append(study_id)
        self.files += files
        for reason, size in freed.items():
            self.bytes_freed[reason] = self.bytes_freed.get(reason, 0) + size

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "emergency": self.emergency,
            "files": self.files,
            "bytes": sum(self.bytes_freed.values()),
            "bytes_by_reason": dict(sorted(self.bytes_freed.items())),
            "studies": self.studies,
            "purgeable_bytes_left": self.purgeable_bytes,
            "free_bytes": self.free_bytes,
        }


def study_purgeable(study: Study, policy: RetentionPolicy) -> PurgeableStudy | None:
    """The stored files of `study` that nothing more is to be done with, each with the time it may go.

    1. A protected study, one the pipeline has not finished (or held), one with a delivery pending or on
       the wire, or with received instances not yet persisted: nothing.
    2. The study's category: rejected at QC, unrouted, or routed (delivered).
    3. Per instance: on every delivery's ledger, none pending; any failed item makes it `failed`.
    """
    if study.protected or study.stage not in DONE_STAGES:
        return None
    if study.deliveries.filter(state__in=OPEN_DELIVERIES).exists():
        return None
    arriving = ReceivedInstance.objects.filter(study_instance_uid=study.study_instance_uid)
    if arriving.filter(state=ReceivedInstance.State.RECEIVED).exists():
        return None
    stored = list(study.instances.filter(file_state=FileState.STORED).values_list("id", "size"))
    if not stored:
        return None
    decision = RoutingDecision.objects.filter(study=study).first()
    items: dict[int, list[tuple[str, int]]] = defaultdict(list)  # instance -> (state, hours) per delivery
    last_delivery = None
    uncommitted: set[int] = set()  # delivered where the destination commits, and not committed (yet)
    for instance_id, state, updated_at, delivery_state, hours, commits, committed_at in DeliveryItem.objects.filter(
        delivery__study=study
    ).values_list(
        "instance_id",
        "state",
        "updated_at",
        "delivery__state",
        "delivery__destination__retention_hours",
        "delivery__destination__storage_commitment",
        "committed_at",
    ):
        if delivery_state == Delivery.State.GIVEN_UP:  # an operator ended it: as good as delivered
            state = DeliveryItem.State.DELIVERED
        elif commits and committed_at is None and state not in UNDELIVERED:
            uncommitted.add(instance_id)
        items[instance_id].append((state, policy.delivered_hours if hours is None else hours))
        last_delivery = max(last_delivery or updated_at, updated_at)
    moments = [arriving.aggregate(at=Max("received_at"))["at"], last_delivery, study.received_at]
    if study.stage == Stage.REJECTED:
        category, hours = PurgeReason.REJECTED, policy.rejected_hours
        moments.append(study.stage_changed_at)
    elif decision is None:
        return None
    elif decision.unrouted:
        category, hours = PurgeReason.UNROUTED, policy.unrouted_hours
    else:
        category, hours = PurgeReason.DELIVERED, policy.delivered_hours
    if decision is not None:
        moments.append(decision.decided_at)
    since = max(m for m in moments if m is not None)
    deliveries = study.deliveries.count()
    files = []
    for instance_id, size in stored:
        ledger = items.get(instance_id, [])
        if len(ledger) < deliveries or (category == PurgeReason.DELIVERED and not ledger):
            continue  # not on every delivery's ledger (yet): keep
        if instance_id in uncommitted:
            continue  # the destination has not committed to it (storage commitment): keep, even in an emergency
        # No delivery is open (1.): an item still pending belongs to a delivery that failed for good.
        undelivered = any(state in UNDELIVERED for state, _ in ledger)
        if undelivered:
            reason, keep = PurgeReason.FAILED, policy.failed_hours
        elif category == PurgeReason.DELIVERED:  # the longest retention of the destinations it went to
            reason, keep = category, max(h for _, h in ledger)
        else:
            reason, keep = category, hours
        if keep is not None:
            files.append(PurgeableFile(instance_id, size, reason, since + timedelta(hours=keep)))
    return PurgeableStudy(study.pk, since, tuple(files)) if files else None


def _candidates(policy: RetentionPolicy, *, now: datetime, emergency: bool):
    """Studies that may have files to purge: finished, unprotected, with stored files, nothing on the way."""
    studies = (
        Study.objects.filter(protected=False, stage__in=DONE_STAGES)
        .filter(Exists(Instance.objects.filter(study=OuterRef("pk"), file_state=FileState.STORED)))
        .exclude(Exists(Delivery.objects.filter(study=OuterRef("pk"), state__in=OPEN_DELIVERIES)))
    )
    if not emergency:
        # A study's last activity is never before its first receipt: nothing younger than the shortest
        # retention can be due.
        shortest = Destination.objects.aggregate(h=Min("retention_hours"))["h"]
        hours = (policy.delivered_hours, policy.unrouted_hours, policy.rejected_hours, policy.failed_hours, shortest)
        studies = studies.filter(received_at__lte=now - timedelta(hours=min(h for h in hours if h is not None)))
    return studies.order_by("received_at", "id")


def purge_plan(*, policy: RetentionPolicy, now: datetime, emergency: bool = False) -> list[PurgeableStudy]:
    """What could be purged now (files due), or in an emergency (every purgeable file, oldest study first)."""
    plan = []
    for study in _candidates(policy, now=now, emergency=emergency).iterator():
        found = study_purgeable(study, policy)
        if found is None:
            continue
        due = found.files if emergency else tuple(f for f in found.files if f.due_at <= now)
        if due:
            plan.append(PurgeableStudy(found.study_id, found.since, due))
    return sorted(plan, key=lambda p: p.since) if emergency else plan


def _study_purge(study_id: int, *, policy: RetentionPolicy, now: datetime, emergency: bool) -> tuple[dict, int]:
    """Purge one study's files that may go, checked again under the study's lock (a late instance, an
    operator's retry and routing take the same lock). Returns the bytes freed by reason and the file count."""
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        found = study and study_purgeable(study, policy)
        if not found:
            return {}, 0
        by_reason: dict[str, list[int]] = defaultdict(list)
        for f in found.files:
            if emergency or f.due_at <= now:
                by_reason[f.reason].append(f.instance_id)
        for reason, ids in by_reason.items():
            instances_purge_mark(instance_ids=ids, reason=reason, now=now)
    removed = instance_files_remove(instance_ids=[i for group in by_reason.values() for i in group])
    return removed.bytes_by_reason, removed.files


def free_bytes() -> int:
    return shutil.disk_usage(settings.STORAGE_ROOT).free


def storage_purge(
    *, now: datetime | None = None, dry_run: bool = False, free: Callable[[], int] = free_bytes
) -> PurgeReport:
    """Purge what is due; below the emergency threshold, then purge oldest first until space is back.

    1. Finish what a purge killed half way left (rows marked, files maybe still there).
    2. Purge every file whose retention passed, study by study, each under its lock.
    3. Free space below the threshold: an episode starts (recorded once, for one notification); purgeable
       studies go oldest first, ignoring retention, until free space is back above it. A run that finds
       enough space ends the episode.
    4. Record the run (not for a dry run): bytes freed by reason, what an emergency could still take.
    """
    now = now or clock.now()
    policy = RetentionPolicy.current()
    report = PurgeReport(dry_run=dry_run)
    run = PurgeRun(started_at=now)
    if not dry_run:
        leftovers = instance_files_remove()  # what a purge killed half way left
        report.add(leftovers.bytes_by_reason, leftovers.files)
    counted: set[int] = set()  # a dry run's files, so an emergency does not count them twice
    for item in purge_plan(policy=policy, now=now):
        report.add(*_purge_or_count(item, policy=policy, now=now, emergency=False, dry_run=dry_run), item.study_id)
        counted.update(f.instance_id for f in item.files)
    threshold = policy.emergency_threshold(settings.STORAGE_MIN_FREE_BYTES)
    available = free() + (sum(report.bytes_freed.values()) if dry_run else 0)
    left = [_without(item, counted) for item in purge_plan(policy=policy, now=now, emergency=True)]
    left = [item for item in left if item.files]
    if available >= threshold and not dry_run:
        # An episode ends when a run finds enough space without an emergency purge: one that only just got
        # back above the threshold would start a new episode (and a new notification) at the next write.
        StorageEmergency.objects.filter(ended_at__isnull=True).update(ended_at=now)
    if available < threshold:
        report.emergency = True
        if not dry_run:
            report.episode_started = _episode_begin(now, available)
        while left and available < threshold:
            item = left.pop(0)
            freed, count = _purge_or_count(item, policy=policy, now=now, emergency=True, dry_run=dry_run)
            report.add(freed, count, item.study_id)
            available = available + sum(freed.values()) if dry_run else free()
        if available < threshold:
            logger.error("emergency purge: nothing more may be purged and %d bytes are free", available)
    report.purgeable_bytes = sum(f.size for item in left for f in item.files)
    report.free_bytes = available
    if not dry_run:
        _run_record(run, report)
    if report.files:
        total = sum(report.bytes_freed.values())
        logger.info("purge: %d files, %d bytes (%s)%s", report.files, total, report.bytes_freed, " [dry run]" * dry_run)
    return report


def _purge_or_count(
    item: PurgeableStudy, *, policy: RetentionPolicy, now: datetime, emergency: bool, dry_run: bool
) -> tuple[dict[str, int], int]:
    if dry_run:
        return _sizes(item.files), len(item.files)
    return _study_purge(item.study_id, policy=policy, now=now, emergency=emergency)


def _without(item: PurgeableStudy, counted: set[int]) -> PurgeableStudy:
    return PurgeableStudy(item.study_id, item.since, tuple(f for f in item.files if f.instance_id not in counted))


def _sizes(files: tuple[PurgeableFile, ...]) -> dict[str, int]:
    sizes: dict[str, int] = defaultdict(int)
    for f in files:
        sizes[f.reason] += f.size
    return dict(sizes)


def _episode_begin(now: datetime, available: int) -> StorageEmergency | None:
    """The episode that starts now, or None when one is already open (staff were told)."""
    with transaction.atomic():
        if StorageEmergency.objects.select_for_update().filter(ended_at__isnull=True).exists():
            return None
        episode = StorageEmergency.objects.create(started_at=now, free_bytes=available)
    logger.warning("storage emergency: %d bytes free, below the emergency threshold: purging oldest first", available)
    return episode


def _run_record(run: PurgeRun, report: PurgeReport) -> None:
    run.finished_at = clock.now()
    run.emergency = report.emergency
    run.files = report.files
    run.bytes_freed = report.bytes_freed
    run.purgeable_bytes = report.purgeable_bytes
    run.free_bytes = report.free_bytes
    run.save()


def emergency_threshold() -> int:
    return RetentionPolicy.current().emergency_threshold(settings.STORAGE_MIN_FREE_BYTES)


def files_purged_on(study_id: int, instance_ids: list[int] | None = None) -> datetime | None:
    """When the purge removed files of the study (of these instances), or None when none is missing."""
    purged = Instance.objects.filter(study_id=study_id).exclude(file_state=FileState.STORED)
    if instance_ids is not None:
        purged = purged.filter(pk__in=instance_ids)
    return purged.aggregate(at=Max("purged_at"))["at"]


def files_purged_error(purged_at: datetime) -> FilesPurged:
    return FilesPurged(
        f"files purged on {purged_at:%Y-%m-%d %H:%M} UTC: nothing to send; receive the study again to send it"
    )


def study_protect(*, study_ids: list[int], protected: bool) -> int:
    return Study.objects.filter(pk__in=study_ids).update(protected=protected)


def study_delete(*, study_id: int, reason: str, now: datetime | None = None) -> int:
    """Delete a study sent in error: its files, then its rows (the caller audits who and why). Refused while
    a delivery of it is on the wire. Returns the bytes removed.

    1. Under the study's lock: refuse if a delivery is sending; mark every stored instance PURGING.
    2. Remove the marked files (a crash here leaves marked rows the next purge finishes).
    3. Delete the study's rows and its received-instance rows, removing the files of those never persisted.
    """
    now = now or clock.now()
    if not reason.strip():
        raise ValueError("a reason is required to delete a study")
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        if study.deliveries.filter(state=Delivery.State.SENDING).exists():
            raise StudyBusy(f"study {study_id} has a delivery on the wire: try again once it ended")
        ids = list(study.instances.values_list("id", flat=True))
        instances_purge_mark(instance_ids=ids, reason=PurgeReason.DELETED, now=now)
    removed = sum(instance_files_remove(instance_ids=ids).bytes_by_reason.values())
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        received = ReceivedInstance.objects.filter(study_instance_uid=study.study_instance_uid)
        paths = list(received.exclude(state=ReceivedInstance.State.PERSISTED).values_list("path", "size"))
        study.delete()  # its series, instances, deliveries and their items, decision, QC, assignments
        received.delete()
    for path, size in paths:
        (settings.STORAGE_ROOT / path).unlink(missing_ok=True)
        removed += size
    logger.warning("study %s deleted by an operator (%d bytes removed)", study_id, removed)
    return removed
