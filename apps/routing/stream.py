"""Forwarding while a study arrives (rules in on-receipt mode): one sender per (study, destination).

The SCP tells the pipeline of each study it starts receiving (and marks it `arriving`); the on-receipt rules
decide on its first instance (decide.study_stream_decide); then, per destination, `delivery_stream` claims the
delivery as any send does (the destination's association limit, its windows, its health), keeps one
association open and, while the study arrives, turns each received row into its Instance row and ledger item
and sends it, in arrival order. The hand-off is the rows themselves: the sender looks for new ones every
POLL seconds (one indexed query), which needs nothing beyond the database and works on the embedded default.

It ends when the study's association has ended (`arriving` cleared) and nothing is left, when the study has
been silent for IDLE_LIMIT, or at the first failure that is not the instance's own (the destination went
away): the delivery is then recorded as any attempt is, and whatever is still pending goes by the normal
delivery path. Each instance is on the ledger once, so nothing goes twice and nothing is lost.
"""

import logging
import time
from datetime import datetime, timedelta

from django.db.models import Exists, OuterRef

from apps.core import clock
from apps.studies.models import FileState, Instance, Study
from apps.studies.services import study_persist_arrived

from . import dicom_send, transformed
from .deliver import Answers, delivery_claim, delivery_record
from .health import destination_health_from_results, sender_session
from .models import Delivery, DeliveryItem

logger = logging.getLogger(__name__)

POLL = 0.005  # seconds between looks for new rows while the study arrives
PASS = 2  # received rows turned into Instance rows and sent per pass
IDLE_LIMIT = 30.0  # an arriving study silent this long: the stream ends, the normal path sends the rest
RENEW_EVERY = timedelta(seconds=1)  # the claim's lease, renewed while the sender waits for rows


class _Stream:
    """What one stream sent: every item tried, its result and the SHA-256 sent, for the final record."""

    def __init__(self) -> None:
        self.prepared = transformed.Prepared()
        self.results: list[dicom_send.Result] = []

    def add(self, prepared: transformed.Prepared, results: list[dicom_send.Result]) -> None:
        self.prepared.sendable += prepared.sendable
        self.prepared.files += prepared.files
        self.prepared.sha256 += prepared.sha256
        self.prepared.sent_uids += prepared.sent_uids
        self.prepared.held |= prepared.held
        self.results += results


def delivery_stream(*, delivery_id: int, now: datetime | None = None, poll: float = POLL) -> str | None:
    """Stream one delivery while its study arrives; returns its state when recorded, None when another
    sender has it (or it waits: its destination down, outside its windows)."""
    delivery, state = delivery_claim(delivery_id, now or clock.now())
    if delivery is None:
        return state
    stream = _Stream()
    session = sender_session(delivery.target)
    try:
        _run(delivery, session, stream, poll)
    finally:
        session.close()
    now = clock.now()
    busy = destination_health_from_results(delivery.target, stream.results, now) if stream.results else False
    paused = any(r.config_error for r in stream.results)
    state = delivery_record(delivery, stream.prepared, stream.results, now, busy=busy, paused=paused)
    logger.info("stream: delivery %s streamed %d instances -> %s", delivery.pk, len(stream.results), state)
    return state


def _run(delivery: Delivery, session, stream: _Stream, poll: float) -> None:
    tried: set[int] = set()
    quiet_since = renewed = time.monotonic()
    look = True  # the ledger may hold pending items: at the start, and after each send
    while True:
        # While nothing arrives a pass is two indexed queries (received rows, the study's arriving flag).
        # A few rows a pass: the first instance goes as soon as its own row is written, not after all arrived.
        look = study_persist_arrived(study_id=delivery.study_id, limit=PASS) > 0 or look
        items = _items_to_send(delivery, tried) if look else []
        look = bool(items)
        if items:
            tried.update(item.pk for item in items)
            prepared = transformed.prepare(delivery, items)
            try:
                transformed.hold(prepared)
                answers = Answers(delivery.pk, prepared)
                results = session.send(prepared.files, on_sent=answers)
            finally:
                transformed.clean(prepared)
            stream.add(prepared, results)
            quiet_since = time.monotonic()
            if any(r.kind == dicom_send.TRANSIENT for r in results):
                return  # the destination, not the instance: the normal path retries what is left
            continue
        if not Study.objects.filter(pk=delivery.study_id, arriving=True).exists():
            if not _items_to_send(delivery, tried, persist_first=True):
                return
            look = True  # what the study's own persist wrote meanwhile: the next pass sends it
            continue
        if time.monotonic() - quiet_since > IDLE_LIMIT:
            logger.warning("stream: study %s silent while arriving; the rest goes after QC", delivery.study_id)
            return
        if time.monotonic() - renewed > RENEW_EVERY.total_seconds():
            Delivery.objects.filter(pk=delivery.pk, state=Delivery.State.SENDING).update(claimed_at=clock.now())
            renewed = time.monotonic()
        time.sleep(poll)


def _items_to_send(delivery: Delivery, tried: set[int], *, persist_first: bool = False) -> list[DeliveryItem]:
    """The study's held instances not yet on this delivery's ledger get an item; the pending items this
    stream has not tried, in arrival order."""
    if persist_first:
        study_persist_arrived(study_id=delivery.study_id)
    on_ledger = DeliveryItem.objects.filter(delivery=delivery, instance=OuterRef("pk"))
    new = Instance.objects.filter(study_id=delivery.study_id, file_state=FileState.STORED).exclude(Exists(on_ledger))
    new_ids = list(new.order_by("pk").values_list("pk", flat=True))
    if new_ids:
        DeliveryItem.objects.bulk_create(
            [DeliveryItem(delivery=delivery, instance_id=i) for i in new_ids], ignore_conflicts=True
        )
    pending = (
        DeliveryItem.objects.filter(delivery=delivery, state=DeliveryItem.State.PENDING)
        .exclude(pk__in=tried)
        .select_related("instance")
        .order_by("instance_id")
    )
    return list(pending)
