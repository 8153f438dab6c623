"""Sending a delivery: claim it, send what is missing over one association, record each answer, retry
or fail; the sweeper of due deliveries, and an operator's retry or give-up. The claim, the answers' record
and the delivery's record are shared with the stream that sends while a study arrives (stream.py)."""

import enum
import logging
import random
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F

from apps.core import clock
from apps.studies.models import Priority, Study

from . import dicom_send, transformed
from .commitment import commitment_open
from .health import association_limit, destination_health_from_results, is_busy, sender
from .models import Delivery, DeliveryItem, Destination, Health
from .retention import files_purged_error, files_purged_on

logger = logging.getLogger(__name__)


def retry_delay(destination: Destination, attempts: int) -> float:
    """Capped exponential backoff with jitter, in seconds."""
    base = destination.retry_base_delay * (2 ** max(attempts - 1, 0))
    return min(base, destination.retry_max_delay) * random.uniform(0.8, 1.2)


class Hold(enum.Enum):
    """Why a delivery is not sent now, with how long it waits (seconds, far below the visibility timeout)."""

    PAUSED = 30  # its destination is unreachable (and no alternate may take over yet)
    CLOSED = 60  # outside the destination's delivery windows (a routine study)
    # Its destination is paused for a configuration error (destination_resume makes it due at once).
    MISCONFIGURED = 300


PAUSED_WAIT = Hold.PAUSED.value
CLOSED_WAIT = Hold.CLOSED.value


def delivery_send(*, delivery_id: int, now: datetime | None = None) -> str | None:
    """Send what is still missing of one delivery; returns its new state, None if it is not sent now.

    1. Claim it (pending -> sending) under a lock on the destination actually used, so a duplicate
       message does nothing and no destination gets more associations than its limit, across workers.
       An unreachable destination pauses (or its alternate takes over after `alternate_after`); outside
       the destination's delivery windows a routine study waits, a STAT study goes at once.
    2. Send the pending items over one association, outside any transaction; each item the destination
       accepts is recorded as its answer arrives, so a worker killed half way re-sends only the rest.
    3. Record each item's outcome, then the delivery's: delivered when every item is, retried later
       while a transient failure is within budget, failed otherwise (kept for an operator).
    """
    now = now or clock.now()
    delivery, state = delivery_claim(delivery_id, now)
    if delivery is None:
        return state
    items = list(delivery.items.filter(state=DeliveryItem.State.PENDING).select_related("instance"))
    send, target = sender(delivery.target)  # C-STORE or STOW-RS
    # Over C-STORE, transformed copies are made by a helper process while the sender sends those already made.
    prepared = transformed.prepare(delivery, items, ahead=send is dicom_send.send and settings.TRANSFORM_AHEAD)
    try:
        results = send(target, prepared.files, on_sent=Answers(delivery.pk, prepared))
        results = prepared.finish(results)  # held and unwritten copies leave the lists and the results
        transformed.hold(prepared)
    finally:
        transformed.clean(prepared)
    busy = destination_health_from_results(delivery.target, results, clock.now())  # none sent: learns nothing
    paused = any(r.config_error for r in results)
    return delivery_record(delivery, prepared, results, clock.now(), busy=busy, paused=paused)


def delivery_claim(delivery_id: int, now: datetime) -> tuple[Delivery | None, str | None]:
    """The claimed delivery, or None and the state to report (None when nothing was attempted)."""
    delivery = Delivery.objects.select_related("destination", "study", "transform").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != Delivery.State.PENDING:
        return None, None
    target, hold = _choose_target(delivery, now)
    if hold is Hold.PAUSED:
        return None, _paused_attempt(delivery, now)
    if hold in (Hold.CLOSED, Hold.MISCONFIGURED):
        Delivery.objects.filter(pk=delivery_id, state=Delivery.State.PENDING).update(
            next_attempt_at=now + timedelta(seconds=hold.value)
        )
        return None, None
    with transaction.atomic():
        locked = Destination.objects.select_for_update().get(pk=target.pk)  # serialises claims per target
        busy = Delivery.objects.filter(target=target, state=Delivery.State.SENDING).count()
        if busy >= association_limit(locked, now):
            # Due at once: the send that frees a slot starts the next due delivery of its destination.
            claimed = 0
            Delivery.objects.filter(pk=delivery_id, state=Delivery.State.PENDING).update(next_attempt_at=now)
        else:
            claimed = Delivery.objects.filter(pk=delivery_id, state=Delivery.State.PENDING).update(
                state=Delivery.State.SENDING, claimed_at=now, attempts=F("attempts") + 1, target=target
            )
    if not claimed:
        return None, None
    delivery.refresh_from_db()
    return delivery, None


def _paused_attempt(delivery: Delivery, now: datetime) -> str:
    """The destination is known to be unreachable: count the attempt without opening an association
    (the health check probes it), so the retry budget still ends in `failed` for an operator."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().select_related("destination").get(pk=delivery.pk)
        if delivery.state != Delivery.State.PENDING:
            return delivery.state
        destination = delivery.destination
        delivery.attempts += 1
        delivery.last_error = f"destination unreachable since {destination.down_since:%Y-%m-%d %H:%M:%S} UTC"
        if delivery.attempts >= destination.max_attempts:
            delivery.state = Delivery.State.FAILED
            delivery.failures += 1
        else:
            delivery.next_attempt_at = now + timedelta(seconds=retry_delay(destination, delivery.attempts))
        delivery.save(update_fields=["attempts", "last_error", "state", "next_attempt_at", "failures"])
    return delivery.state


def _choose_target(delivery: Delivery, now: datetime) -> tuple[Destination | None, Hold | None]:
    """The destination to send to now, or None and why it waits."""
    primary = delivery.destination
    target = primary
    if primary.config_error:
        return None, Hold.MISCONFIGURED
    if primary.health == Health.DOWN:
        alternate = primary.alternate
        overdue = primary.down_since and primary.down_since <= now - timedelta(seconds=primary.alternate_after)
        if not (overdue and alternate and alternate.enabled and alternate.health != Health.DOWN):
            return None, Hold.PAUSED
        target = alternate
    if delivery.study.priority != Priority.STAT:
        windows = list(primary.windows.all())
        if windows and not any(w.is_open(now) for w in windows):
            return None, Hold.CLOSED
    return target, None


ITEM_STATE = {
    dicom_send.DELIVERED: DeliveryItem.State.DELIVERED,
    dicom_send.WARNING: DeliveryItem.State.WARNING,
    dicom_send.TRANSIENT: DeliveryItem.State.PENDING,
    dicom_send.PERMANENT: DeliveryItem.State.FAILED,
}


class Answers:
    """As each answer arrives: an accepted item is recorded at once, and the delivery's claim is renewed (at
    most once a second), so only a sender that went silent (killed, hung) loses its lease to another worker."""

    RENEW_EVERY = timedelta(seconds=1)

    def __init__(self, delivery_id: int, prepared: "transformed.Prepared") -> None:
        self.delivery_id = delivery_id
        self.items = prepared.sendable
        self.sha256 = prepared.sha256
        self.sent_uids = prepared.sent_uids
        self.renewed = clock.now()
        self.refunded = False

    def __call__(self, index: int, result: dicom_send.Result) -> None:
        now = clock.now()
        item = self.items[index]
        if result.unreachable and not self.refunded:
            self._refund_if_busy(result)
        if result.kind in (dicom_send.DELIVERED, dicom_send.WARNING):
            DeliveryItem.objects.filter(pk=item.pk, state=DeliveryItem.State.PENDING).update(
                state=ITEM_STATE[result.kind],
                status=result.status,
                attempts=item.attempts + 1,
                updated_at=now,
                sent_sha256=self.sha256[index],
                sent_sop_instance_uid=self.sent_uids[index],
            )
        if now - self.renewed >= self.RENEW_EVERY:
            Delivery.objects.filter(pk=self.delivery_id, state=Delivery.State.SENDING).update(claimed_at=now)
            self.renewed = now

    def _refund_if_busy(self, result: dicom_send.Result) -> None:
        """A destination busy with another delivery of ours is no failure of this one: the attempt its claim
        counted is given back, so waiting for a slot never spends the retry budget."""
        self.refunded = True
        target_id = Delivery.objects.filter(pk=self.delivery_id).values_list("target_id", flat=True).first()
        if target_id is not None and is_busy(target_id, [result]):
            Delivery.objects.filter(pk=self.delivery_id, state=Delivery.State.SENDING, attempts__gt=0).update(
                attempts=F("attempts") - 1
            )


def delivery_record(
    delivery: Delivery,
    prepared: "transformed.Prepared",
    results: list[dicom_send.Result],
    now: datetime,
    *,
    busy: bool,
    paused: bool = False,
) -> str:
    """The items' outcomes, then the delivery's. A busy destination is no failure: due again at once (the
    delivery that frees the slot starts it), with no backoff. Nor is one just paused for a configuration
    error: the attempt is given back and the delivery waits for an operator."""
    items = prepared.sendable
    errors = list(prepared.held.values())
    for item, result, sha256, sent_uid in zip(items, results, prepared.sha256, prepared.sent_uids, strict=True):
        item.state = ITEM_STATE[result.kind]
        item.status = result.status
        item.error = result.error[:2000]
        item.attempts += 1
        item.updated_at = now
        if result.kind in (dicom_send.DELIVERED, dicom_send.WARNING):
            item.sent_sha256 = sha256
            item.sent_sop_instance_uid = sent_uid
        if result.error:
            errors.append(result.error)
    DeliveryItem.objects.bulk_update(
        items, ["state", "status", "error", "attempts", "updated_at", "sent_sha256", "sent_sop_instance_uid"]
    )
    started = delivery.claimed_at  # the claim of this attempt (re-read below, it may be a renewed lease)
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().select_related("destination").get(pk=delivery.pk)
        if items and started is not None:
            delivery.last_attempt_at = now
            delivery.last_attempt_seconds = max((now - started).total_seconds(), 0.0)
        pending = delivery.items.filter(state=DeliveryItem.State.PENDING).exists()
        failed = delivery.items.filter(state=DeliveryItem.State.FAILED).exists()
        held = delivery.items.filter(state=DeliveryItem.State.HELD).exists()
        delivery.last_error = errors[0][:2000] if errors else ""
        if not pending and not failed:
            delivery.state = Delivery.State.HELD if held else Delivery.State.DELIVERED
            delivery.delivered_at = now
            if delivery.state == Delivery.State.DELIVERED:  # its destination may be asked to commit to them
                commitment_open(delivery=delivery, now=now)
        elif pending and paused:
            delivery.state = Delivery.State.PENDING
            delivery.attempts = max(delivery.attempts - 1, 0)
            delivery.next_attempt_at = now + timedelta(seconds=Hold.MISCONFIGURED.value)
        elif pending and delivery.attempts < delivery.destination.max_attempts:
            delivery.state = Delivery.State.PENDING
            delay = 0 if busy else retry_delay(delivery.destination, delivery.attempts)
            delay = max([delay, *(r.retry_after for r in results if r.retry_after is not None)])
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        else:
            delivery.state = Delivery.State.FAILED
            delivery.failures += 1
        delivery.claimed_at = None
        delivery.save(
            update_fields=[
                "state",
                "delivered_at",
                "next_attempt_at",
                "last_error",
                "claimed_at",
                "failures",
                "attempts",
                "last_attempt_at",
                "last_attempt_seconds",
            ]
        )
    log = logger.info if delivery.state == Delivery.State.DELIVERED else logger.warning
    count = len(items) + len(prepared.held)
    log("deliver: delivery %s (%d items) -> %s %s", delivery.pk, count, delivery.state, delivery.last_error)
    return delivery.state


def deliveries_due(
    *, now: datetime | None = None, lease: float | None = None, destination_id: int | None = None, limit: int = 500
) -> list[int]:
    """Pending deliveries whose time has come; each is leased so the next tick does not enqueue it again.

    A delivery left in `sending` by a killed worker is given back after the lease.
    """
    now = now or clock.now()
    lease = timedelta(seconds=lease if lease is not None else settings.RECONCILE_AFTER)
    Delivery.objects.filter(state=Delivery.State.SENDING, claimed_at__lt=now - lease).update(
        state=Delivery.State.PENDING, next_attempt_at=now, claimed_at=None
    )
    pending = Delivery.objects.filter(state=Delivery.State.PENDING, next_attempt_at__lte=now)
    if destination_id is not None:
        pending = pending.filter(destination_id=destination_id)
    due = list(pending.order_by("next_attempt_at", "id").values_list("id", flat=True)[:limit])
    # The lease: enqueued now, due again only if nobody sent it within the lease.
    Delivery.objects.filter(pk__in=due).update(next_attempt_at=now + lease)
    return due


def delivery_retry(*, delivery_id: int, now: datetime | None = None) -> bool:
    """An operator's retry of a failed delivery, or of one whose transform held instances (the profile or its
    pseudonym table mended since): sends exactly what is missing. Raises FilesPurged when the purge removed
    files it would send."""
    now = now or clock.now()
    with transaction.atomic():
        study_id = Delivery.objects.filter(pk=delivery_id).values_list("study_id", flat=True).first()
        Study.objects.select_for_update().filter(pk=study_id).first()  # the purge decides under this lock
        retryable = (Delivery.State.FAILED, Delivery.State.HELD)
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id, state__in=retryable).first()
        if delivery is None:
            return False
        unsent = (DeliveryItem.State.FAILED, DeliveryItem.State.PENDING, DeliveryItem.State.HELD)
        missing = delivery.items.filter(state__in=unsent)
        purged_at = files_purged_on(delivery.study_id, list(missing.values_list("instance_id", flat=True)))
        if purged_at is not None:
            raise files_purged_error(purged_at)
        missing.exclude(state=DeliveryItem.State.PENDING).update(state=DeliveryItem.State.PENDING, error="")
        delivery.state = Delivery.State.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = now
        delivery.save(update_fields=["state", "attempts", "next_attempt_at"])
    return True


def delivery_give_up(*, delivery_id: int) -> bool:
    """An operator stops retrying a failed (or held) delivery for good: its files then count as delivered for
    the purge. False when it was neither."""
    ended = (Delivery.State.FAILED, Delivery.State.HELD)
    return bool(Delivery.objects.filter(pk=delivery_id, state__in=ended).update(state=Delivery.State.GIVEN_UP))
