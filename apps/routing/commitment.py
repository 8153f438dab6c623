"""Storage commitment, Push Model (PS3.4 Annex J; docs/storage-commitment.md).

After a destination with `storage_commitment` answered success for a delivery's instances, a request row lists
them under a new Transaction UID (`commitment_open`, in the same transaction that marks the delivery
delivered). `commitment_send` sends its N-ACTION (dicom_send.commit); the destination's N-EVENT-REPORT comes
back on that association or, usually, on a new one to our SCP (`CommitmentReports`, composed into it by
runscp), and `commitment_report` records it: instances committed are marked, instances reported failed (or
not mentioned) are sent again. No report within the destination's `commitment_timeout`: the request is due
again; the sweeper's `commitment_send` tells its caller it is overdue (staff are told) and asks again, up to
MAX_ATTEMPTS requests, then the delivery fails for an operator. A late report still counts.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import Q
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from apps.core import clock

from . import dicom_send
from .health import dicom_target
from .models import CommitmentRequest, Delivery, DeliveryItem

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # N-ACTION requests per transaction before the delivery fails for an operator
# Seconds to keep our association open after the N-ACTION's answer, for a report sent on it.
SAME_ASSOCIATION_WAIT = 2.0
NOT_ACCEPTED_RETRY = 30  # seconds before asking again when the request itself was not accepted (transient)
SENT = (DeliveryItem.State.DELIVERED, DeliveryItem.State.WARNING)
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class Reported:
    """What a report changed: whether instances go again, and whether the delivery is now wholly committed."""

    request_id: int
    delivery_id: int
    study_id: int
    resend: bool
    committed: bool


@dataclass(frozen=True)
class Sent:
    """What one `commitment_send` did. `overdue`: the previous request was accepted and its report did not
    come within the timeout (staff are told). `delivery_failed`: the request ended, the delivery failed."""

    request_id: int
    delivery_id: int
    state: str
    overdue: bool = False
    delivery_failed: bool = False
    reported: Reported | None = None


def needs_commitment(delivery: Delivery) -> bool:
    return delivery.destination.storage_commitment


def commitment_open(*, delivery: Delivery, now: datetime) -> int | None:
    """A request for the delivery's sent and uncommitted instances; its id, None when there is nothing to ask
    (or the destination does not commit). Called within the transaction that marks the delivery delivered."""
    if not needs_commitment(delivery):
        return None
    references = [
        [sop_class, sent or own]  # the UID the copy sent carries: a transform may have given it another
        for sop_class, own, sent in delivery.items.filter(state__in=SENT, committed_at__isnull=True)
        .order_by("id")
        .values_list("instance__sop_class_uid", "instance__sop_instance_uid", "sent_sop_instance_uid")
    ]
    if not references:
        return None
    request = CommitmentRequest.objects.create(
        delivery=delivery,
        transaction_uid=generate_uid(),
        references=references,
        next_attempt_at=now,
        requested_at=now,
    )
    return request.pk


def commitments_due(*, now: datetime | None = None, delivery_id: int | None = None, limit: int = 200) -> list[int]:
    """Requests waiting whose time has come: never sent, to ask again, or whose report is overdue. A second
    enqueue is harmless: `commitment_send` claims each attempt by its due time."""
    now = now or clock.now()
    due = CommitmentRequest.objects.filter(state=CommitmentRequest.State.REQUESTED, next_attempt_at__lte=now)
    if delivery_id is not None:
        due = due.filter(delivery_id=delivery_id)
    return list(due.order_by("next_attempt_at", "id").values_list("id", flat=True)[:limit])


def commitment_send(*, request_id: int, now: datetime | None = None) -> Sent | None:
    """Send (again) one due request's N-ACTION; None when it is not due (a duplicate message, or answered).

    1. Under the request's lock: not waiting or not due, nothing. An accepted request due again is overdue.
       After MAX_ATTEMPTS requests it ends (timed out when accepted, else failed) and so does the delivery.
    2. Count the attempt and set its report deadline, then send outside any transaction.
    3. Its answer: accepted, the deadline stands; transient, asked again soon; refused, it and the delivery
       fail. A report the destination sent on the same association is recorded at once.
    """
    now = now or clock.now()
    with transaction.atomic():
        request = (
            CommitmentRequest.objects.select_for_update(of=("self",))
            .select_related("delivery__destination", "delivery__target")
            .filter(pk=request_id)
            .first()
        )
        if request is None or request.state != CommitmentRequest.State.REQUESTED or request.next_attempt_at > now:
            return None
        delivery = request.delivery
        overdue = request.last_status == 0x0000
        if request.attempts >= MAX_ATTEMPTS:
            state = CommitmentRequest.State.TIMED_OUT if overdue else CommitmentRequest.State.FAILED
            why = "no report" if overdue else "the request was not accepted"
            error = f"storage commitment not confirmed after {request.attempts} request(s): {why}"
            _end(request, state, error[:2000], now)
            return Sent(request.pk, delivery.pk, state, overdue=overdue, delivery_failed=_fail(delivery, error))
        request.attempts += 1
        request.sent_at = now
        request.next_attempt_at = now + timedelta(seconds=delivery.destination.commitment_timeout)
        request.save(update_fields=["attempts", "sent_at", "next_attempt_at"])
    destination = delivery.target or delivery.destination
    references = [tuple(r) for r in request.references]
    # A report on our SCP (Orthanc's way) ends the wait on this association: a worker held 2 s for a report that
    # had come already kept the STAT lane's next task waiting (docs/BENCHMARKS.md).
    answered = CommitmentRequest.objects.filter(pk=request.pk).exclude(state=CommitmentRequest.State.REQUESTED)
    outcome = dicom_send.commit(
        dicom_target(destination),
        request.transaction_uid,
        references,
        wait_for_report=SAME_ASSOCIATION_WAIT,
        answered_elsewhere=answered.exists,
    )
    return _after_request(request, outcome, overdue, clock.now())


def _after_request(request: CommitmentRequest, outcome: dicom_send.Commit, overdue: bool, now: datetime) -> Sent:
    result = outcome.result
    waiting = CommitmentRequest.objects.filter(pk=request.pk, state=CommitmentRequest.State.REQUESTED)
    CommitmentRequest.objects.filter(pk=request.pk).update(last_status=result.status, error=result.error[:2000])
    delivery_failed = False
    state = CommitmentRequest.State.REQUESTED
    if result.kind == dicom_send.TRANSIENT:
        waiting.update(next_attempt_at=now + timedelta(seconds=NOT_ACCEPTED_RETRY), last_status=None)
        logger.warning("commitment %s: request not accepted now (%s)", request.pk, result.error)
    elif result.kind == dicom_send.PERMANENT:
        with transaction.atomic():
            locked = CommitmentRequest.objects.select_for_update().get(pk=request.pk)
            if locked.state == CommitmentRequest.State.REQUESTED:
                state = CommitmentRequest.State.FAILED
                _end(locked, state, result.error[:2000], now)
                delivery_failed = _fail(request.delivery, f"storage commitment refused: {result.error}")
    reported = commitment_report(report=outcome.report, now=now) if outcome.report is not None else None
    return Sent(request.pk, request.delivery_id, state, overdue, delivery_failed, reported)


def _end(request: CommitmentRequest, state: str, error: str, now: datetime) -> None:
    request.state = state
    request.error = error
    request.answered_at = now if state in (CommitmentRequest.State.COMMITTED, CommitmentRequest.State.PARTIAL) else None
    request.save(update_fields=["state", "error", "answered_at"])


def _fail(delivery: Delivery, error: str) -> bool:
    """The delivery fails for an operator (their retry sends what is missing and asks again). Only a
    delivered one: a delivery already going again (instances reported failed) carries on."""
    with transaction.atomic():
        locked = Delivery.objects.select_for_update().get(pk=delivery.pk)
        if locked.state != Delivery.State.DELIVERED:
            return False
        locked.state = Delivery.State.FAILED
        locked.failures += 1
        locked.last_error = error[:2000]
        locked.save(update_fields=["state", "failures", "last_error"])
    logger.warning("deliver: delivery %s failed: %s", delivery.pk, error)
    return True


def commitment_report(*, report: dicom_send.CommitmentReport, now: datetime | None = None) -> Reported | None:
    """Record a destination's report; None for an unknown transaction or one already answered.

    1. The request, locked, by its Transaction UID. A report after the request timed out still counts.
    2. Instances it lists as committed get `committed_at`. Every other instance the request listed (reported
       failed, or not mentioned) was not committed: pending again, and its delivery pending, so it is re-sent
       (and committed by the request that follows that delivery).
    3. A delivery failed only for want of a report is delivered again once nothing of it is missing.
    """
    now = now or clock.now()
    with transaction.atomic():
        request = (
            CommitmentRequest.objects.select_for_update(of=("self",))
            .select_related("delivery")
            .filter(transaction_uid=report.transaction_uid)
            .first()
        )
        if request is None:
            logger.warning("storage commitment report for an unknown transaction %s", report.transaction_uid)
            return None
        if request.state in (CommitmentRequest.State.COMMITTED, CommitmentRequest.State.PARTIAL):
            return None
        delivery = Delivery.objects.select_for_update().get(pk=request.delivery_id)
        listed = {uid for _, uid in request.references}
        committed = listed & set(report.committed)
        failed = listed - committed
        items = delivery.items.filter(state__in=SENT)
        items.filter(_known_as(committed), committed_at__isnull=True).update(committed_at=now)
        for uid in sorted(failed):
            reason = report.failed.get(uid)
            error = "not committed by the destination" + (f" (failure reason 0x{reason:04X})" if reason else "")
            items.filter(_known_as({uid}), committed_at__isnull=True).update(
                state=DeliveryItem.State.PENDING, error=error, updated_at=now
            )
        resend = _delivery_after_report(delivery, bool(failed), now)
        request.state = CommitmentRequest.State.PARTIAL if failed else CommitmentRequest.State.COMMITTED
        request.committed, request.failed = len(committed), len(failed)
        request.answered_at = now
        request.error = f"{len(failed)} instance(s) not committed: sent again" if failed else ""
        request.save(update_fields=["state", "committed", "failed", "answered_at", "error"])
        whole = delivery_committed(delivery)
    logger.info(
        "commitment %s: %d committed, %d failed (delivery %s)", request.pk, len(committed), len(failed), delivery.pk
    )
    return Reported(request.pk, delivery.pk, delivery.study_id, resend, whole)


def _known_as(uids: set[str]) -> Q:
    """The items the destination knows by these UIDs: the copy's own where a transform gave it one."""
    return Q(sent_sop_instance_uid__in=uids) | Q(sent_sop_instance_uid="", instance__sop_instance_uid__in=uids)


def _delivery_after_report(delivery: Delivery, failed: bool, now: datetime) -> bool:
    """Pending again when instances must go again (True); delivered again when a timed-out request was
    answered after all and nothing is missing."""
    missing = delivery.items.exclude(state__in=SENT).exists()
    if failed and delivery.state in (Delivery.State.DELIVERED, Delivery.State.FAILED):
        delivery.state = Delivery.State.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = now
        delivery.last_error = "instances not committed by the destination: sent again"
        delivery.save(update_fields=["state", "attempts", "next_attempt_at", "last_error"])
        return True
    if not failed and not missing and delivery.state == Delivery.State.FAILED:
        delivery.state = Delivery.State.DELIVERED
        delivery.last_error = ""
        delivery.save(update_fields=["state", "last_error"])
    return failed and delivery.state == Delivery.State.PENDING


def delivery_committed(delivery: Delivery) -> bool:
    """Delivered, and every instance sent committed (where the destination commits; else just delivered)."""
    if delivery.state != Delivery.State.DELIVERED:
        return False
    if not needs_commitment(delivery):
        return True
    return not delivery.items.filter(state__in=SENT, committed_at__isnull=True).exists()


class CommitmentReports:
    """The SCP's side of storage commitment: N-EVENT-REPORTs of the Push Model that destinations send on
    associations of their own. runscp composes it into the SCP (`scp.serve(extra_services=...)`), with
    `on_reported` (the pipeline's: re-send, assign) called after each report is recorded."""

    def __init__(self, *, on_reported: Callable[[Reported], None]) -> None:
        self.on_reported = on_reported

    def configure(self, ae) -> None:
        # The destination opens the association and plays the SCP role (it proposes SCP/SCU role selection
        # with the SCP role for itself, PS3.4 J.3.3): both roles are accepted as proposed.
        ae.add_supported_context(
            StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian], scu_role=True, scp_role=True
        )

    def handlers(self) -> list:
        return [(evt.EVT_N_EVENT_REPORT, self.on_event_report)]

    def on_event_report(self, event) -> tuple[int, None]:
        if str(event.request.AffectedSOPClassUID) != StorageCommitmentPushModel:
            return 0x0118, None  # no such SOP class
        try:
            report = dicom_send.commitment_report_parse(event.event_type, event.event_information)
        except Exception as exc:  # noqa: BLE001 - a report we cannot read is refused, never a crash
            logger.warning("storage commitment report not understood: %s", exc)
            return PROCESSING_FAILURE, None
        close_old_connections()
        try:
            reported = commitment_report(report=report)
        except DatabaseError:
            connection.close()  # the request stays waiting: asked again after its timeout
            return PROCESSING_FAILURE, None
        if reported is not None:
            try:
                self.on_reported(reported)
            except Exception:  # noqa: BLE001 - recorded already: the sweepers start what this would have
                logger.exception("starting the work after a commitment report failed")
        return 0x0000, None
