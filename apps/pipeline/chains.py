"""Starting work: the per-study chain and the side tasks, by task name.

The chain reads top to bottom; each step takes the study id and checks the study's stage itself, so any
step can be re-run alone. A publish that fails (broker away) is logged and left to the reconciler: the
database already holds the work.
"""

import logging
import time

from celery import chain, signature
from django.db import DatabaseError

from apps.routing.models import Delivery
from apps.routing.retention import emergency_threshold, free_bytes
from apps.routing.services import Reported, on_receipt_rules_exist
from apps.studies.models import Priority, Stage, Study
from apps.studies.services import priority_hint, study_register

from .gate import study_waiting_for

logger = logging.getLogger(__name__)

STEPS = ("persist", "classify", "check", "route", "assign", "notify")

# The step that moves a study out of each stage; waiting and final stages have none.
NEXT_STEP = {
    Stage.RECEIVED: "persist",
    Stage.PERSISTED: "classify",
    Stage.CLASSIFIED: "check",
    Stage.CHECKED: "route",
    Stage.ROUTED: "assign",
    Stage.ASSIGNED: "notify",
}


# STAT work runs on its own queue, served by its own workers: a routine backlog never delays it.
STAT_LANE = "stat"


def lane(priority: str) -> str | None:
    """The queue a study's work takes: the STAT lane, or None for each task's own queue (task_routes)."""
    return STAT_LANE if priority == Priority.STAT else None


def study_lane(study_id: int) -> str | None:
    return lane(Study.objects.filter(pk=study_id).values_list("priority", flat=True).first() or "")


def delivery_lane(delivery_id: int) -> str | None:
    return lane(Delivery.objects.filter(pk=delivery_id).values_list("study__priority", flat=True).first() or "")


def study_chain(study_id: int, first: str = "persist", queue: str | None = None):
    steps = STEPS[STEPS.index(first) :]
    options = {"queue": queue} if queue else {}
    return chain(*(signature(f"pipeline.{step}", args=(study_id,), immutable=True, **options) for step in steps))


def _publish(description: str, sig) -> bool:
    try:
        sig.apply_async()
    except Exception as exc:  # noqa: BLE001 - any broker failure: the reconciler re-enqueues from the database
        logger.warning("could not enqueue %s (%s); the reconciler will", description, type(exc).__name__)
        return False
    return True


def chain_start(study_id: int, first: str = "persist", queue: str | None = None) -> bool:
    """Start the study's chain from `first`, on `queue` or else on the lane its priority of record earns."""
    try:
        queue = queue or study_lane(study_id)
    except DatabaseError as exc:  # database away: the task's own queue will do
        logger.warning("could not read study %s's priority (%s)", study_id, type(exc).__name__)
    return _publish(f"study {study_id} from {first}", study_chain(study_id, first, queue))


def task_start(name: str, object_id: int, queue: str | None = None) -> bool:
    options = {"queue": queue} if queue else {}
    return _publish(f"{name} {object_id}", signature(f"pipeline.{name}", args=(object_id,), **options))


def study_arriving(uid: str, urgency: set[tuple[str, str]]) -> None:
    """The SCP's word that a study's first instance (in this association) is stored: when a rule forwards on
    receipt, the study is marked arriving and its streaming senders are started (routing/stream.py)."""
    try:
        if not on_receipt_rules_exist():
            return
        study = study_register(study_instance_uid=uid)
        Study.objects.filter(pk=study.pk).update(arriving=True)
    except DatabaseError as exc:  # the study goes after QC as any
        logger.warning("could not start streaming a study (%s)", type(exc).__name__)
        return
    task_start("stream_start", study.pk, queue=lane(priority_hint(urgency)))


def studies_received(studies: dict[str, set[tuple[str, str]]]) -> None:
    """The SCP's hand-over at association end: one chain per study received in the association, on the
    STAT lane from its first task when its instances said STAT (classification has not run yet). A study
    streamed on receipt is no longer arriving: its senders finish what is left and stop."""
    try:
        Study.objects.filter(study_instance_uid__in=list(studies), arriving=True).update(arriving=False)
    except DatabaseError as exc:  # a sender still waiting stops after its idle limit
        logger.warning("could not mark studies as arrived (%s)", type(exc).__name__)
    for uid in sorted(studies):
        try:
            study = study_register(study_instance_uid=uid)
            queue = lane(priority_hint(studies[uid]))
        except DatabaseError as exc:  # database away: the received rows are committed, reconcile later
            logger.warning("could not register a study at association end (%s)", type(exc).__name__)
            continue
        chain_start(study.pk, queue=queue)
    _purge_if_space_low()


# At most one emergency purge asked for per SCP process in this many seconds (the purge itself is safe to
# run twice; asking once per association would flood the queue while space is low).
PURGE_ASK_EVERY = 10.0
_purge_asked_at = -PURGE_ASK_EVERY


def _purge_if_space_low() -> None:
    """Free space below the emergency threshold: ask for the purge now, before the SCP has to refuse."""
    global _purge_asked_at
    now = time.monotonic()
    if now - _purge_asked_at < PURGE_ASK_EVERY:
        return
    try:
        low = free_bytes() < emergency_threshold()
    except (OSError, DatabaseError) as exc:
        logger.warning("could not check free space at association end (%s)", type(exc).__name__)
        return
    if low:
        _purge_asked_at = now
        _publish("storage purge", signature("pipeline.storage_purge"))


def assign_when_verified(delivery_id: int) -> bool:
    """A delivery is delivered (and committed, where its destination commits): a study that waited for it to
    be assigned (assign after verified delivery) goes on from its assign step, on its lane."""
    study_id = study_waiting_for(delivery_id=delivery_id)
    return study_id is not None and chain_start(study_id, "assign")


def commitment_reported(reported: Reported) -> None:
    """After a storage commitment report was recorded (the SCP's, or one on our own association): instances
    not committed go again; a delivery now wholly committed may let its study be assigned."""
    if reported.resend:
        task_start("deliver", reported.delivery_id, queue=delivery_lane(reported.delivery_id))
    if reported.committed:
        assign_when_verified(reported.delivery_id)
