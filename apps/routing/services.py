"""Writes on routing: decide where a study goes, and send a delivery."""

import logging
import random
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Max, Q
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from apps.core import clock
from apps.studies.classify import normalise_priority
from apps.studies.headers import header_from_dataset
from apps.studies.models import FileState, Priority, Stage, Study

from . import dicom_send, rules
from .models import Delivery, DeliveryItem, Destination, Health, RoutingDecision, RoutingRule
from .retention import files_purged_error, files_purged_on

logger = logging.getLogger(__name__)


# Compiled rules, rebuilt when a rule or destination changes (admin saves bump updated_at).
_engine_cache: dict[str, tuple[tuple, rules.Engine, frozenset[str]]] = {}


def _rules_version() -> tuple:
    return (
        tuple(RoutingRule.objects.aggregate(n=Count("id"), at=Max("updated_at")).values()),
        tuple(Destination.objects.aggregate(n=Count("id"), at=Max("updated_at")).values()),
    )


def _compiled_rule(rule: RoutingRule) -> rules.Rule:
    """A rule row (with criteria, destinations and windows prefetched) as the engine takes it."""
    return rules.Rule(
        id=rule.pk,
        name=rule.name,
        priority=rule.priority,
        exclusive=rule.exclusive,
        fallback=rule.fallback,
        criteria=tuple(rules.Criterion(c.attribute, c.operator, c.value, c.keyword) for c in rule.criteria.all()),
        destinations=tuple(d.name for d in rule.destinations.all() if d.enabled),
        windows=tuple(rules.Window(w.weekday_numbers, w.start, w.end, w.timezone) for w in rule.windows.all()),
    )


def _rule_rows():
    return RoutingRule.objects.prefetch_related("criteria", "destinations", "windows")


def rules_load() -> list[rules.Rule]:
    return [_compiled_rule(rule) for rule in _rule_rows().filter(enabled=True)]


def rules_engine() -> tuple[rules.Engine, frozenset[str]]:
    """The compiled engine and the DICOM keywords its criteria read; rebuilt only after a change."""
    version = _rules_version()
    cached = _engine_cache.get("engine")
    if cached is None or cached[0] != version:
        loaded = rules_load()
        keywords = frozenset(c.keyword for r in loaded for c in r.criteria if c.keyword)
        cached = (version, rules.Engine(loaded), keywords)
        _engine_cache["engine"] = cached
    return cached[1], cached[2]


def study_facts(study: Study, keywords: frozenset[str] = frozenset()) -> dict:
    facts = {
        "modality": [m for m in study.modalities.split("\\") if m],
        "body_part": study.body_part,
        "study_description": study.study_description,
        "institution": study.institution_name,
        "referring_physician": study.referring_physician_name,
        "priority": study.priority,
        "calling_ae": study.calling_ae_title,
        "called_ae": study.called_ae_title,
        "sop_class": sorted(set(study.instances.values_list("sop_class_uid", flat=True))),
    }
    if keywords:
        facts.update(_keyword_facts(study, keywords))
    return facts


def _keyword_facts(study: Study, keywords: frozenset[str]) -> dict:
    """Any DICOM keyword a rule names, read from the study's first instance (header only)."""
    first = study.instances.filter(file_state=FileState.STORED).order_by("id").first()
    if first is None:
        return {}
    try:
        ds = dcmread(Path(settings.STORAGE_ROOT) / first.path, stop_before_pixels=True, specific_tags=list(keywords))
    except (OSError, InvalidDicomError) as exc:
        logger.warning("route: cannot read study %s's header for keyword rules: %s", study.pk, exc)
        return {}
    return {f"keyword:{kw}": _text(ds.get(kw)) for kw in keywords}


def _text(value) -> list[str] | str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return str(value)


def study_route(*, study_id: int, now: datetime | None = None) -> list[int]:
    """Decide once where the study goes, and make sure every instance is on the ledger.

    1. A study is decided once: late instances follow the first decision to the same destinations.
    2. One Delivery per (study, destination); one DeliveryItem per (instance, destination).
    3. A delivery that gains items goes back to pending. Returns the deliveries to send now.
    """
    now = now or clock.now()
    # Facts are read before the lock (a header read for keyword rules is file I/O); the stage check
    # under the lock guarantees they describe the content QC checked.
    unlocked = Study.objects.filter(pk=study_id, stage=Stage.CHECKED).first()
    if unlocked is None:
        return []
    engine, keywords = rules_engine()
    facts = study_facts(unlocked, keywords)
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.CHECKED:
            return []
        decision = RoutingDecision.objects.filter(study=study).first()
        if decision is None:
            result = engine.evaluate(facts, at=now)
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


# How long a delivery waits before trying again when its destination is paused (unreachable) or
# closed (outside its delivery windows). Far below the visibility timeout.
PAUSED_WAIT = 30
CLOSED_WAIT = 60


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
    delivery, state = _claim(delivery_id, now)
    if delivery is None:
        return state
    items = list(delivery.items.filter(state=DeliveryItem.State.PENDING).select_related("instance"))
    files = [
        dicom_send.File(
            i.instance.sop_class_uid, i.instance.transfer_syntax_uid, settings.STORAGE_ROOT / i.instance.path
        )
        for i in items
    ]
    results = dicom_send.send(_target(delivery.target), files, on_sent=_Answers(delivery.pk, items))
    busy = _health_record(delivery.target, results, clock.now())
    return _record(delivery, items, results, clock.now(), busy=busy)


def _claim(delivery_id: int, now: datetime) -> tuple[Delivery | None, str | None]:
    """The claimed delivery, or None and the state to report (None when nothing was attempted)."""
    delivery = Delivery.objects.select_related("destination", "study").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != Delivery.State.PENDING:
        return None, None
    target, wait = _choose_target(delivery, now)
    if target is None and wait == PAUSED_WAIT:
        return None, _paused_attempt(delivery, now)
    if target is None:
        Delivery.objects.filter(pk=delivery_id, state=Delivery.State.PENDING).update(
            next_attempt_at=now + timedelta(seconds=wait)
        )
        return None, None
    with transaction.atomic():
        locked = Destination.objects.select_for_update().get(pk=target.pk)  # serialises claims per target
        busy = Delivery.objects.filter(target=target, state=Delivery.State.SENDING).count()
        if busy >= _association_limit(locked, now):
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


# How long a destination found busy (it left an association request of ours unanswered while it served others
# of ours) gets no more associations at once than it served then. After that a further one is tried again:
# its operator may have raised its limit, and finding out costs one association request.
BUSY_MEMORY = timedelta(hours=1)


def _association_limit(destination: Destination, now: datetime) -> int:
    """Associations we may hold at once: the configured limit, or fewer while the destination proved busy."""
    if destination.busy_limit and destination.busy_at and destination.busy_at > now - BUSY_MEMORY:
        return min(destination.max_associations, destination.busy_limit)
    return destination.max_associations


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


def _choose_target(delivery: Delivery, now: datetime) -> tuple[Destination | None, int]:
    """The destination to send to now, or None and how long to wait."""
    primary = delivery.destination
    target = primary
    if primary.health == Health.DOWN:
        alternate = primary.alternate
        overdue = primary.down_since and primary.down_since <= now - timedelta(seconds=primary.alternate_after)
        if not (overdue and alternate and alternate.enabled and alternate.health != Health.DOWN):
            return None, PAUSED_WAIT
        target = alternate
    if delivery.study.priority != Priority.STAT:
        windows = list(primary.windows.all())
        if windows and not any(w.is_open(now) for w in windows):
            return None, CLOSED_WAIT
    return target, 0


def _health_record(destination: Destination, results: list[dicom_send.Result], now: datetime) -> bool:
    """A destination that answered is up; one we could not reach at all is down (its queue pauses), unless it
    was busy: it took the connection and left our request waiting while it served another of ours. Returns
    whether it was busy."""
    reached = any(r.status is not None for r in results)  # it answered at least one C-STORE
    unreachable = bool(results) and all(r.unreachable for r in results)
    if reached:
        destination_health_set(destination_id=destination.pk, up=True, detail="", now=now)
    elif unreachable and _busy(destination.pk, results):
        _busy_record(destination, now)
        return True
    elif unreachable:
        destination_health_set(destination_id=destination.pk, up=False, detail=results[0].error, now=now)
    return False


def _busy(destination_id: int, results: list[dicom_send.Result]) -> bool:
    """Busy, not down: connected, no answer to the association request, and another delivery of ours to it is
    sending (besides the caller's own, still `sending` while it reports). Refused or nothing else of ours
    open is down."""
    if not any(r.connected for r in results):
        return False
    return Delivery.objects.filter(target_id=destination_id, state=Delivery.State.SENDING).count() >= 2


def _busy_record(destination: Destination, now: datetime) -> None:
    """Remember how many associations of ours it served when it left another waiting: no more than that now."""
    serving = Delivery.objects.filter(target=destination, state=Delivery.State.SENDING).count() - 1
    Destination.objects.filter(pk=destination.pk).update(busy_limit=max(serving, 1), busy_at=now)
    logger.info(
        "destination %s is busy (serving %d association(s) of ours): at most that many for %s",
        destination.name,
        max(serving, 1),
        BUSY_MEMORY,
    )


def destination_health_set(*, destination_id: int, up: bool, detail: str, now: datetime) -> bool:
    """Record a destination's health; True when it just came back (its paused deliveries are released)."""
    with transaction.atomic():
        destination = Destination.objects.select_for_update().get(pk=destination_id)
        was_down = destination.health == Health.DOWN
        destination.health = Health.UP if up else Health.DOWN
        destination.health_checked_at = now
        destination.health_detail = detail[:255]
        if up:
            destination.down_since = None
        elif destination.down_since is None:
            destination.down_since = now
        destination.save(update_fields=["health", "health_checked_at", "health_detail", "down_since"])
        if up and was_down:
            Delivery.objects.filter(destination=destination, state=Delivery.State.PENDING).update(next_attempt_at=now)
            logger.info("destination %s is reachable again: its deliveries resume", destination.name)
            return True
    if not up and not was_down:
        logger.warning("destination %s is unreachable (%s): its deliveries pause", destination.name, detail)
    return False


def destinations_check(*, now: datetime | None = None, interval: float | None = None) -> list[int]:
    """C-ECHO the enabled destinations not heard from within `interval` (a send counts); returns the
    ids that just came back."""
    now = now or clock.now()
    quiet_since = now - timedelta(seconds=interval if interval is not None else settings.HEALTH_CHECK_INTERVAL)
    back = []
    due = Destination.objects.filter(enabled=True).filter(
        Q(health_checked_at__isnull=True) | Q(health_checked_at__lt=quiet_since) | Q(health=Health.DOWN)
    )
    for destination in due:
        if _sending_now(destination, now):
            continue  # its answers are proof of life; an echo would wait behind them and could time out
        result = dicom_send.echo(_target(destination))
        up = result.kind == dicom_send.DELIVERED
        if destination_health_set(destination_id=destination.pk, up=up, detail=result.error, now=clock.now()):
            back.append(destination.pk)
    return back


def _sending_now(destination: Destination, now: datetime) -> bool:
    """A delivery of ours to it renewed its claim recently: answers arrive (at most `dimse_timeout` apart,
    or the sender gives up), and the claim is renewed at most once a second."""
    recent = now - timedelta(seconds=destination.dimse_timeout + 1)
    return Delivery.objects.filter(target=destination, state=Delivery.State.SENDING, claimed_at__gte=recent).exists()


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


class _Answers:
    """As each answer arrives: an accepted item is recorded at once, and the delivery's claim is renewed (at
    most once a second), so only a sender that went silent (killed, hung) loses its lease to another worker."""

    RENEW_EVERY = timedelta(seconds=1)

    def __init__(self, delivery_id: int, items: list[DeliveryItem]) -> None:
        self.delivery_id = delivery_id
        self.items = items
        self.renewed = clock.now()
        self.refunded = False

    def __call__(self, index: int, result: dicom_send.Result) -> None:
        now = clock.now()
        item = self.items[index]
        if result.unreachable and not self.refunded:
            self._refund_if_busy(result)
        if result.kind in (dicom_send.DELIVERED, dicom_send.WARNING):
            DeliveryItem.objects.filter(pk=item.pk, state=DeliveryItem.State.PENDING).update(
                state=ITEM_STATE[result.kind], status=result.status, attempts=item.attempts + 1, updated_at=now
            )
        if now - self.renewed >= self.RENEW_EVERY:
            Delivery.objects.filter(pk=self.delivery_id, state=Delivery.State.SENDING).update(claimed_at=now)
            self.renewed = now

    def _refund_if_busy(self, result: dicom_send.Result) -> None:
        """A destination busy with another delivery of ours is no failure of this one: the attempt its claim
        counted is given back, so waiting for a slot never spends the retry budget."""
        self.refunded = True
        target_id = Delivery.objects.filter(pk=self.delivery_id).values_list("target_id", flat=True).first()
        if target_id is not None and _busy(target_id, [result]):
            Delivery.objects.filter(pk=self.delivery_id, state=Delivery.State.SENDING, attempts__gt=0).update(
                attempts=F("attempts") - 1
            )


def _record(
    delivery: Delivery, items: list[DeliveryItem], results: list[dicom_send.Result], now: datetime, *, busy: bool
) -> str:
    """The items' outcomes, then the delivery's. A busy destination is no failure: due again at once (the
    delivery that frees the slot starts it), with no backoff."""
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
            delay = 0 if busy else retry_delay(delivery.destination, delivery.attempts)
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        else:
            delivery.state = Delivery.State.FAILED
            delivery.failures += 1
        delivery.claimed_at = None
        delivery.save(
            update_fields=["state", "delivered_at", "next_attempt_at", "last_error", "claimed_at", "failures"]
        )
    log = logger.info if delivery.state == Delivery.State.DELIVERED else logger.warning
    log("deliver: delivery %s (%d items) -> %s %s", delivery.pk, len(items), delivery.state, delivery.last_error)
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
    """An operator's retry of a failed delivery: sends exactly what is missing. Raises FilesPurged when the
    purge removed files it would send."""
    now = now or clock.now()
    with transaction.atomic():
        study_id = Delivery.objects.filter(pk=delivery_id).values_list("study_id", flat=True).first()
        Study.objects.select_for_update().filter(pk=study_id).first()  # the purge decides under this lock
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id, state=Delivery.State.FAILED).first()
        if delivery is None:
            return False
        missing = delivery.items.filter(state__in=[DeliveryItem.State.FAILED, DeliveryItem.State.PENDING])
        purged_at = files_purged_on(delivery.study_id, list(missing.values_list("instance_id", flat=True)))
        if purged_at is not None:
            raise files_purged_error(purged_at)
        delivery.items.filter(state=DeliveryItem.State.FAILED).update(state=DeliveryItem.State.PENDING)
        delivery.state = Delivery.State.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = now
        delivery.save(update_fields=["state", "attempts", "next_attempt_at"])
    return True


def delivery_give_up(*, delivery_id: int) -> bool:
    """An operator stops retrying a failed delivery for good: its files then count as delivered for the
    purge. False when it was not failed."""
    return bool(
        Delivery.objects.filter(pk=delivery_id, state=Delivery.State.FAILED).update(state=Delivery.State.GIVEN_UP)
    )


def destination_echo(*, destination_id: int) -> dicom_send.Result:
    return dicom_send.echo(_target(Destination.objects.get(pk=destination_id)))


def facts_from_dataset(ds, keywords: frozenset[str] = frozenset()) -> dict:
    """Facts for one uploaded DICOM file, as study_facts gives them for a stored study."""
    header = header_from_dataset(ds)
    return {
        "modality": [header["Modality"]] if header["Modality"] else [],
        "body_part": header["BodyPartExamined"],
        "study_description": header["StudyDescription"],
        "institution": header["InstitutionName"],
        "referring_physician": header["ReferringPhysicianName"],
        "priority": normalise_priority(header["RequestedProcedurePriority"])[0],
        "calling_ae": "",
        "called_ae": "",
        "sop_class": [header["SOPClassUID"]] if header["SOPClassUID"] else [],
        **{f"keyword:{kw}": _text(ds.get(kw)) for kw in keywords},
    }


def dry_run(*, facts: dict, now: datetime | None = None) -> rules.Decision:
    """What the current rules would decide for these facts; nothing is written."""
    engine, _ = rules_engine()
    return engine.evaluate(facts, at=now or clock.now())


def dry_run_study(*, study_id: int, now: datetime | None = None) -> rules.Decision:
    _, keywords = rules_engine()
    return dry_run(facts=study_facts(Study.objects.get(pk=study_id), keywords), now=now)


def rules_replay(*, draft_rule_ids: list[int], days: int, now: datetime | None = None) -> list[dict]:
    """Replay the enabled rules plus the given draft rules (enabled or not) over the studies decided in
    the last `days` days; returns the studies that would have gone elsewhere, with both answers."""
    now = now or clock.now()
    loaded = {r.id: r for r in rules_load()}
    loaded |= {draft.pk: _compiled_rule(draft) for draft in _rule_rows().filter(pk__in=draft_rule_ids)}
    engine = rules.Engine(loaded.values())
    keywords = frozenset(c.keyword for r in loaded.values() for c in r.criteria if c.keyword)
    changed = []
    recent = RoutingDecision.objects.filter(decided_at__gte=now - timedelta(days=days)).select_related("study")
    for decision in recent.order_by("decided_at"):
        replayed = engine.evaluate(study_facts(decision.study, keywords), at=decision.decided_at)
        if replayed.destinations != decision.destinations:
            changed.append(
                {
                    "study": decision.study,
                    "decided_at": decision.decided_at,
                    "was": decision.destinations,
                    "would_be": replayed.destinations,
                    "matched": replayed.matched,
                }
            )
    return changed


def study_reroute(*, study_id: int) -> bool:
    """Forget an unrouted study's decision and make it ready to route again (with today's rules). Raises
    FilesPurged when its files were purged."""
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None:
            return False
        purged_at = files_purged_on(study_id)
        if purged_at is not None:
            raise files_purged_error(purged_at)
        deleted, _ = RoutingDecision.objects.filter(study=study, unrouted=True).delete()
        if not deleted:
            return False
        study.advance(Stage.CHECKED)
    return True
