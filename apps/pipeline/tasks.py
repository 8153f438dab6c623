"""Celery tasks: thin interfaces over services. They take ids, never objects or patient data."""

import logging

from celery import shared_task
from django.conf import settings

from apps.notifications.services import notification_send as _notification_send
from apps.notifications.services import notifications_due
from apps.reading.services import study_assign
from apps.routing.services import deliveries_due as _deliveries_due
from apps.routing.services import delivery_send, study_route
from apps.studies.services import study_check, study_classify, study_persist

from . import services
from .chains import chain_start, task_start

logger = logging.getLogger(__name__)


@shared_task(name="pipeline.persist")
def persist(study_id: int) -> None:
    study_persist(study_id=study_id)


@shared_task(name="pipeline.classify")
def classify(study_id: int) -> None:
    study_classify(study_id=study_id)


@shared_task(name="pipeline.check")
def check(study_id: int) -> None:
    study_check(study_id=study_id)


@shared_task(name="pipeline.route")
def route(study_id: int) -> None:
    for delivery_id in study_route(study_id=study_id):
        task_start("deliver", delivery_id)


@shared_task(name="pipeline.assign")
def assign(study_id: int) -> None:
    study_assign(study_id=study_id)


@shared_task(name="pipeline.notify")
def notify(study_id: int) -> None:
    for notification_id in services.study_notify(study_id=study_id):
        _notification_send(notification_id=notification_id)


@shared_task(name="pipeline.deliver")
def deliver(delivery_id: int) -> None:
    delivery_send(delivery_id=delivery_id)


@shared_task(name="pipeline.notification_send")
def notification_send(notification_id: int) -> None:
    _notification_send(notification_id=notification_id)


@shared_task(name="pipeline.reconcile")
def reconcile() -> None:
    for study_id, step in services.reconcile_targets():
        chain_start(study_id, step)
    for notification_id in notifications_due():
        task_start("notification_send", notification_id)


@shared_task(name="pipeline.deliveries_due")
def deliveries_due() -> None:
    for delivery_id in _deliveries_due(lease=settings.RECONCILE_AFTER):
        task_start("deliver", delivery_id)


@shared_task(name="pipeline.assign_unassigned")
def assign_unassigned() -> None:
    for study_id in services.unassigned_studies():
        if study_assign(study_id=study_id) is not None:
            chain_start(study_id, "notify")
