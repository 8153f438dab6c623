"""Starting work: the per-study chain and the side tasks, by task name.

The chain reads top to bottom; each step takes the study id and checks the study's stage itself, so any
step can be re-run alone. A publish that fails (broker away) is logged and left to the reconciler: the
database already holds the work.
"""

import logging

from celery import chain, signature

from apps.studies.models import Stage
from apps.studies.services import study_register

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


def study_chain(study_id: int, first: str = "persist"):
    steps = STEPS[STEPS.index(first) :]
    return chain(*(signature(f"pipeline.{step}", args=(study_id,), immutable=True) for step in steps))


def _publish(description: str, sig) -> bool:
    try:
        sig.apply_async()
    except Exception as exc:  # noqa: BLE001 - any broker failure: the reconciler re-enqueues from the database
        logger.warning("could not enqueue %s (%s); the reconciler will", description, type(exc).__name__)
        return False
    return True


def chain_start(study_id: int, first: str = "persist") -> bool:
    return _publish(f"study {study_id} from {first}", study_chain(study_id, first))


def task_start(name: str, object_id: int) -> bool:
    return _publish(f"{name} {object_id}", signature(f"pipeline.{name}", args=(object_id,)))


def studies_received(study_instance_uids: set[str]) -> None:
    """The SCP's hand-over at association end: one chain per study received in the association."""
    for uid in sorted(study_instance_uids):
        try:
            study = study_register(study_instance_uid=uid)
        except Exception as exc:  # noqa: BLE001 - database away: the received rows are committed, reconcile later
            logger.warning("could not register a study at association end (%s)", type(exc).__name__)
            continue
        chain_start(study.pk)
