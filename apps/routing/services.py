"""Writes on routing: decide where a study goes, and send a delivery."""

import logging
import random
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F

from apps.core import clock
from apps.studies.models import Stage, Study

from . import dicom_send, rules
from .models import Delivery, DeliveryItem, Destination, RoutingDecision, RoutingRule

logger = logging.getLogger(__name__)


def rules_load() -> list[rules.Rule]:
    loaded = []
    for rule in RoutingRule.objects.filter(enabled=True).prefetch_related("criteria", "destinations"):
        loaded.append(
            rules.Rule(
                id=rule.pk,
                name=rule.name,
                priority=rule.priority,
                exclusive=rule.exclusive,
                fallback=rule.fallback,
                criteria=tuple(rules.Criterion(c.attribute, c.operator, c.value) for c in rule.criteria.all()),
                destinations=tuple(d.name for d in rule.destinations.all() if d.enabled),
            )
        )
    return loaded


def study_facts(study: Study) -> dict:
    return {
        "modality": [m for m in study.modalities.split("\\") if m],
        "body_part": study.body_part,
        "study_description": study.study_description,
        "institution": study.institution_name,
        "referring_physician": study.referring_physician_name,
        "priority": study.priority,
        "calling_ae": study.calling_ae_title,
        "called_ae": study.called_ae_title,
    }


def study_route(*, study_id: int, now: datetime | None = None) -> list[int]:
    """Decide once where the study goes, and make sure every instance is on the ledger.

    1. A study is decided once: late instances follow the first decision to the same destinations.
    2. One Delivery per (study, destination); one DeliveryItem per (instance, destination).
    3. A delivery that gains items goes back to pending. Returns the deliveries to send now.
    """
    now = now or clock.now()
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.CHECKED:
            return []
        decision = RoutingDecision.objects.filter(study=study).first()
        if decision is None:
            result = rules.evaluate(rules_load(), study_facts(study))
            decision = RoutingDecision.objects.create(
                study=study,
                matched_rules=result.matched,
                destinations=result.destinations,
                explanation=result.explanation,
                unrouted=not result.destinations,
                decided_at=now,
            )
            logger.info("route: study %s -> %s", study.pk, result.destinations or "unrouted")
        due = _ledger_extend(study, decision.destinations, now)
        study.advance(Stage.ROUTED, detail="" if decision.destinations else "no rule matched", now=now)
    return due


def _ledger_extend(study: Study, destination_names: list[str], now: datetime) -> list[int]:
    due = []
    instance_ids = list(study.instances.values_list("id", flat=True))
    for destination in Destination.objects.filter(name__in=destination_names):
        delivery, _ = Delivery.objects.get_or_create(study=study, destination=destination)
        known = set(delivery.items.values_list("instance_id", flat=True))
        new = [DeliveryItem(delivery=delivery, instance_id=i) for i in instance_ids if i not in known]
        if new:
            DeliveryItem.objects.bulk_create(new, ignore_conflicts=True)
            Delivery.objects.filter(pk=delivery.pk).exclude(state=Delivery.State.SENDING).update(
                state=Delivery.State.PENDING, next_attempt_at=now
            )
        if new or delivery.state == Delivery.State.PENDING:
            due.append(delivery.pk)
    return due


def retry_delay(destination: Destination, attempts: int) -> float:
    """Capped exponential backoff with jitter, in seconds."""
    base = destination.retry_base_delay * (2 ** max(attempts - 1, 0))
    return min(base, destination.retry_max_delay) * random.uniform(0.8, 1.2)


def delivery_send(*, delivery_id: int, now: datetime | None = None) -> str | None:
    """Send what is still missing of one delivery; returns its new state, None if not ours to send.

    1. Claim it: pending -> sending (compare-and-set), so a duplicate message does nothing.
    2. Send the pending items over one association, outside any transaction.
    3. Record each item's outcome, then the delivery's: delivered when every item is, retried later
       while a transient failure is within budget, failed otherwise (kept for an operator).
    """
    now = now or clock.now()
    claimed = Delivery.objects.filter(pk=delivery_id, state=Delivery.State.PENDING).update(
        state=Delivery.State.SENDING, claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    delivery = Delivery.objects.select_related("destination").get(pk=delivery_id)
    destination = delivery.destination
    items = list(delivery.items.filter(state=DeliveryItem.State.PENDING).select_related("instance"))
    results = dicom_send.send(
        _target(destination),
        [
            dicom_send.File(
                i.instance.sop_class_uid, i.instance.transfer_syntax_uid, Path(settings.STORAGE_ROOT) / i.instance.path
            )
            for i in items
        ],
    )
    return _record(delivery, items, results, clock.now())


def _target(destination: Destination) -> dicom_send.Target:
    return dicom_send.Target(
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        calling_ae_title=settings.SCP_AE_TITLE,
        connect_timeout=destination.connect_timeout,
        dimse_timeout=destination.dimse_timeout,
        network_timeout=destination.network_timeout,
    )


ITEM_STATE = {
    dicom_send.DELIVERED: DeliveryItem.State.DELIVERED,
    dicom_send.WARNING: DeliveryItem.State.WARNING,
    dicom_send.TRANSIENT: DeliveryItem.State.PENDING,
    dicom_send.PERMANENT: DeliveryItem.State.FAILED,
}


def _record(delivery: Delivery, items: list[DeliveryItem], results: list[dicom_send.Result], now: datetime) -> str:
    errors = []
    for item, result in zip(items, results, strict=True):
        item.state = ITEM_STATE[result.kind]
        item.status = result.status
        item.error = result.error[:2000]
        item.attempts += 1
        item.updated_at = now
        if result.error:
            errors.append(result.error)
    DeliveryItem.objects.bulk_update(items, ["state", "status", "error", "attempts", "updated_at"])
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().select_related("destination").get(pk=delivery.pk)
        pending = delivery.items.filter(state=DeliveryItem.State.PENDING).exists()
        failed = delivery.items.filter(state=DeliveryItem.State.FAILED).exists()
        delivery.last_error = errors[0][:2000] if errors else ""
        if not pending and not failed:
            delivery.state = Delivery.State.DELIVERED
            delivery.delivered_at = now
        elif pending and delivery.attempts < delivery.destination.max_attempts:
            delivery.state = Delivery.State.PENDING
            delivery.next_attempt_at = now + timedelta(seconds=retry_delay(delivery.destination, delivery.attempts))
        else:
            delivery.state = Delivery.State.FAILED
        delivery.claimed_at = None
        delivery.save(update_fields=["state", "delivered_at", "next_attempt_at", "last_error", "claimed_at"])
    log = logger.info if delivery.state == Delivery.State.DELIVERED else logger.warning
    log("deliver: delivery %s (%d items) -> %s %s", delivery.pk, len(items), delivery.state, delivery.last_error)
    return delivery.state


def deliveries_due(*, now: datetime | None = None, lease: float | None = None) -> list[int]:
    """Pending deliveries whose time has come; each is leased so the next tick does not enqueue it again.

    A delivery left in `sending` by a killed worker is given back after the lease.
    """
    now = now or clock.now()
    lease = timedelta(seconds=lease if lease is not None else settings.RECONCILE_AFTER)
    Delivery.objects.filter(state=Delivery.State.SENDING, claimed_at__lt=now - lease).update(
        state=Delivery.State.PENDING, next_attempt_at=now, claimed_at=None
    )
    due = list(
        Delivery.objects.filter(state=Delivery.State.PENDING, next_attempt_at__lte=now).values_list("id", flat=True)[
            :500
        ]
    )
    # The lease: enqueued now, due again only if nobody sent it within the lease.
    Delivery.objects.filter(pk__in=due).update(next_attempt_at=now + lease)
    return due


def delivery_retry(*, delivery_id: int, now: datetime | None = None) -> bool:
    """An operator's retry of a failed delivery: sends exactly what is missing."""
    now = now or clock.now()
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id, state=Delivery.State.FAILED).first()
        if delivery is None:
            return False
        delivery.items.filter(state=DeliveryItem.State.FAILED).update(state=DeliveryItem.State.PENDING)
        delivery.state = Delivery.State.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = now
        delivery.save(update_fields=["state", "attempts", "next_attempt_at"])
    return True


def destination_echo(*, destination_id: int) -> dicom_send.Result:
    return dicom_send.echo(_target(Destination.objects.get(pk=destination_id)))
