"""Celery tasks: thin interfaces over services. They take ids, never objects or patient data."""

import contextlib
import functools
import logging

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, connection

from apps.notifications.services import notification_send as _notification_send
from apps.notifications.services import notifications_due
from apps.ops.services import heartbeat
from apps.priors.services import prior_fetch_run, priors_start
from apps.priors.services import prior_fetches_due as _prior_fetches_due
from apps.reading.services import escalation_sweep, sla_sweep, study_assign
from apps.routing.models import Delivery
from apps.routing.retention import emergency_threshold, free_bytes
from apps.routing.retention import storage_purge as _storage_purge
from apps.routing.services import (
    commitment_send,
    commitments_due,
    delivery_send,
    delivery_stream,
    study_route,
    study_stream_decide,
)
from apps.routing.services import deliveries_due as _deliveries_due
from apps.routing.services import destinations_check as _destinations_check
from apps.studies.services import study_check, study_classify, study_persist

from . import services
from .chains import (
    STAT_LANE,
    assign_when_verified,
    chain_start,
    commitment_reported,
    delivery_lane,
    lane,
    study_lane,
    task_start,
)
from .gate import study_assign_gate

logger = logging.getLogger(__name__)


def sweeper(task):
    """A Beat sweeper skips its tick while the database is away, with one warning line rather than an error
    and a traceback each time: the next tick does the work, nothing is lost by skipping."""

    @functools.wraps(task)
    def run() -> None:
        try:
            task()
        except DatabaseError as exc:
            logger.warning("%s skipped: database unavailable (%s)", task.__name__, type(exc).__name__)
            with contextlib.suppress(DatabaseError):
                connection.close()

    return run


@shared_task(name="pipeline.persist")
def persist(study_id: int) -> None:
    study_persist(study_id=study_id)


@shared_task(name="pipeline.classify", bind=True)
def classify(self, study_id: int) -> None:
    priority = study_classify(study_id=study_id)
    moved = priority is not None and lane(priority) == STAT_LANE
    moved = moved and (self.request.delivery_info or {}).get("routing_key") != STAT_LANE
    # STAT only now (nothing at receipt said so): the rest of the chain moves to the STAT lane.
    if moved and chain_start(study_id, "check", queue=STAT_LANE):
        self.request.chain = None


@shared_task(name="pipeline.check")
def check(study_id: int) -> None:
    study_check(study_id=study_id)


@shared_task(name="pipeline.route")
def route(study_id: int) -> None:
    for delivery_id in study_route(study_id=study_id):
        deliver_start(delivery_id)
    prior_fetches_start(study_id)


def prior_fetches_start(study_id: int) -> None:
    """Priors from an archive beside the study's own deliveries. They never hold up the chain: a fault here
    is logged, and the Beat sweeper starts any fetch row already written."""
    try:
        fetch_ids = priors_start(study_id=study_id)
    except Exception as exc:  # noqa: BLE001 - priors are an extra: reading the study must go on
        logger.warning("could not start prior fetches of study %s (%s)", study_id, type(exc).__name__)
        return
    for fetch_id in fetch_ids:
        task_start("prior_fetch", fetch_id)


@shared_task(name="pipeline.assign")
def assign(study_id: int) -> None:
    # Assign after verified delivery: a study waiting for its reading destination stays ROUTED, with why;
    # the delivery (or its commitment) starts this step again, and the reconciler covers a lost message.
    if study_assign_gate(study_id=study_id) is None:
        study_assign(study_id=study_id)


@shared_task(name="pipeline.notify")
def notify(study_id: int) -> None:
    for notification_id in services.study_notify(study_id=study_id):
        _notification_send(notification_id=notification_id)


def deliver_start(delivery_id: int) -> bool:
    """A STAT study's deliveries take the STAT lane: a routine backlog at the deliver queue never delays them."""
    return task_start("deliver", delivery_id, queue=delivery_lane(delivery_id))


@shared_task(name="pipeline.stream_start", bind=True)
def stream_start(self, study_id: int) -> None:
    """The on-receipt rules' decision on a study's first instance; one streaming sender per destination, on
    the lane this task came by (the STAT lane when the first instance said STAT: it is not classified yet)."""
    came_by = (self.request.delivery_info or {}).get("routing_key")
    queue = STAT_LANE if came_by == STAT_LANE else study_lane(study_id)
    first, *others = study_stream_decide(study_id=study_id) or [None]
    for delivery_id in others:
        task_start("stream", delivery_id, queue=queue)
    if first is not None:  # the first destination streams here: one Celery hop less before its first instance
        _after_send(first, delivery_stream(delivery_id=first))


@shared_task(name="pipeline.stream")
def stream(delivery_id: int) -> None:
    _after_send(delivery_id, delivery_stream(delivery_id=delivery_id))


@shared_task(name="pipeline.deliver")
def deliver(delivery_id: int) -> None:
    _after_send(delivery_id, delivery_send(delivery_id=delivery_id))


def _after_send(delivery_id: int, state: str | None) -> None:
    if state == Delivery.State.FAILED:
        for notification_id in services.delivery_failed_notify(delivery_id=delivery_id):
            task_start("notification_send", notification_id)
    if state == Delivery.State.HELD:
        for notification_id in services.delivery_held_notify(delivery_id=delivery_id):
            task_start("notification_send", notification_id)
    if state == Delivery.State.DELIVERED:
        # Its destination may be asked to commit to what it got; a study may have waited for it to be assigned.
        for request_id in commitments_due(delivery_id=delivery_id):
            task_start("commit", request_id, queue=delivery_lane(delivery_id))
        assign_when_verified(delivery_id)
    if state is not None:
        # A slot at this destination is free again: start what waits for it rather than the next sweep.
        destination_id = Delivery.objects.values_list("destination_id", flat=True).get(pk=delivery_id)
        for next_id in _deliveries_due(destination_id=destination_id, limit=1):
            deliver_start(next_id)


@shared_task(name="pipeline.commit")
def commit(request_id: int) -> None:
    """Send (again) one storage commitment request (N-ACTION); staff told when its report is overdue."""
    sent = commitment_send(request_id=request_id)
    if sent is None:
        return
    if sent.overdue:
        for notification_id in services.commitment_overdue_notify(request_id=request_id):
            task_start("notification_send", notification_id)
    if sent.delivery_failed:
        for notification_id in services.delivery_failed_notify(delivery_id=sent.delivery_id):
            task_start("notification_send", notification_id)
    if sent.reported is not None:
        commitment_reported(sent.reported)


@shared_task(name="pipeline.commitments_due")
@sweeper
def commitments_sweep() -> None:
    for request_id in commitments_due():
        task_start("commit", request_id)


@shared_task(name="pipeline.prior_fetch")
def prior_fetch(fetch_id: int) -> None:
    prior_fetch_run(fetch_id=fetch_id)


@shared_task(name="pipeline.prior_fetches_due")
@sweeper
def prior_fetches_due() -> None:
    for fetch_id in _prior_fetches_due(lease=settings.RECONCILE_AFTER):
        task_start("prior_fetch", fetch_id)


@shared_task(name="pipeline.notification_send")
def notification_send(notification_id: int) -> None:
    _notification_send(notification_id=notification_id)


@shared_task(name="pipeline.reconcile")
@sweeper
def reconcile() -> None:
    for study_id, step in services.reconcile_targets():
        chain_start(study_id, step)
    for notification_id in notifications_due():
        task_start("notification_send", notification_id)


@shared_task(name="pipeline.beat_tick")
@sweeper
def beat_tick() -> None:
    heartbeat(role="beat", name="schedule")


@shared_task(name="pipeline.deliveries_due")
@sweeper
def deliveries_due() -> None:
    for delivery_id in _deliveries_due(lease=settings.RECONCILE_AFTER):
        deliver_start(delivery_id)


@shared_task(name="pipeline.destinations_check")
@sweeper
def destinations_check() -> None:
    for destination_id in _destinations_check():
        for delivery_id in _deliveries_due(destination_id=destination_id):
            deliver_start(delivery_id)


@shared_task(name="pipeline.assign_unassigned")
@sweeper
def assign_unassigned() -> None:
    for study_id in services.unassigned_studies():
        if study_assign(study_id=study_id) is not None:
            chain_start(study_id, "notify")


@shared_task(name="pipeline.escalations_due")
@sweeper
def escalations_due() -> None:
    for action in escalation_sweep():
        for notification_id in services.escalation_notify(action=action):
            task_start("notification_send", notification_id, queue=STAT_LANE)


@shared_task(name="pipeline.sla_check")
@sweeper
def sla_check() -> None:
    for event in sla_sweep():
        for notification_id in services.sla_notify(event=event):
            task_start("notification_send", notification_id)


@shared_task(name="pipeline.privileges_expiring")
@sweeper
def privileges_expiring() -> None:
    for notification_id in services.privileges_expiring_notify():
        task_start("notification_send", notification_id)


@shared_task(name="pipeline.certificates_expiring")
@sweeper
def certificates_expiring() -> None:
    for notification_id in services.certificates_expiring_notify():
        task_start("notification_send", notification_id)


@shared_task(name="pipeline.storage_check")
@sweeper
def storage_check() -> None:
    for notification_id in services.storage_low_notify():
        task_start("notification_send", notification_id)
    if free_bytes() < emergency_threshold():
        storage_purge()


@shared_task(name="pipeline.storage_purge")
@sweeper
def storage_purge() -> None:
    for notification_id in services.storage_emergency_notify(report=_storage_purge()):
        task_start("notification_send", notification_id)


@shared_task(name="pipeline.storage_sweep")
@sweeper
def storage_sweep() -> None:
    services.storage_sweep()
