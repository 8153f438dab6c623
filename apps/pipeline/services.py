"""Orchestration that spans domains: notifying the assigned reader, and finding stuck work."""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from apps.core import clock, tls
from apps.ingest.storage import Spool
from apps.notifications.models import Notification
from apps.notifications.services import notification_create, notification_webhooks
from apps.ops import services as ops_services
from apps.reading.defaults import SUPERVISORS_GROUP
from apps.reading.models import Assignment, EscalationPolicy, SlaEvent
from apps.reading.services import EscalationAction, privileges_expiring
from apps.routing.commitment import MAX_ATTEMPTS as COMMITMENT_MAX_ATTEMPTS
from apps.routing.models import CommitmentRequest, Delivery, DeliveryItem, Destination
from apps.routing.retention import PurgeReport, emergency_threshold
from apps.studies.models import ReceivedInstance, Stage, Study
from apps.studies.services import study_register

from .chains import NEXT_STEP

logger = logging.getLogger(__name__)

ASSIGNED_EVENT = "study_assigned"


def assignment_message(assignment: Assignment) -> tuple[str, str]:
    """Title and body for the reader: ids, accession, modality, priority; never names or birth dates."""
    study = assignment.study
    what = " ".join(p for p in (study.modality, study.body_part) if p) or "study"
    title = f"[{study.priority or 'ROUTINE'}] New {what} assigned (accession {study.accession_number or '-'})"
    body = (
        f"A study has been assigned to you.\n\n"
        f"Assignment: {assignment.pk}\nStudy: {study.pk}\nAccession: {study.accession_number or '-'}\n"
        f"Modality: {study.modalities or study.modality or '-'}\nBody part: {study.body_part or '-'}\n"
        f"Priority: {study.priority or 'ROUTINE'}\nInstances: {study.num_instances}\n"
    )
    return title, body


def assignment_notify(*, assignment: Assignment) -> list[int]:
    """The reader's notifications for an assignment (once per assignment and channel), and the webhooks."""
    study = assignment.study
    title, body = assignment_message(assignment)
    key = f"assignment:{assignment.pk}"
    ids = notification_create(
        event=ASSIGNED_EVENT,
        subject_key=key,
        recipient_id=assignment.radiologist.user_id,
        channels=[Notification.Channel.IN_APP, Notification.Channel.EMAIL],
        title=title,
        body=body,
    )
    return ids + _webhooks("stat_assigned" if study.priority == "STAT" else ASSIGNED_EVENT, key, study, assignment)


def study_updated_notify(*, assignment: Assignment) -> list[int]:
    """Instances arrived after the assignment: its reader is told once per new content of the study."""
    study = assignment.study
    key = f"assignment:{assignment.pk}:instances:{study.num_instances}"
    title = f"Study {study.pk} (accession {study.accession_number or '-'}) has new images"
    body = f"The study assigned to you now has {study.num_instances} instances in {study.num_series} series."
    ids = notification_create(
        event="study_updated",
        subject_key=key,
        recipient_id=assignment.radiologist.user_id,
        channels=[Notification.Channel.IN_APP],
        title=title,
        body=body,
    )
    return ids + _webhooks("study_updated", key, study, assignment, instances=study.num_instances)


def study_notify(*, study_id: int, now: datetime | None = None) -> list[int]:
    """Notify the assigned reader: of the assignment, or of new instances in a study already theirs."""
    now = now or clock.now()
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.ASSIGNED:
            return []
        assignment = study.assignments.filter(status__in=Assignment.OPEN).select_related("radiologist", "study").first()
        ids = []
        if assignment is not None:
            told = Notification.objects.filter(event=ASSIGNED_EVENT, subject_key=f"assignment:{assignment.pk}").exists()
            ids = study_updated_notify(assignment=assignment) if told and assignment.updated_at else []
            ids += assignment_notify(assignment=assignment)  # creates nothing when already told
        study.advance(Stage.NOTIFIED, now=now)
    return ids


DELIVERY_FAILED_EVENT = "delivery_failed"


def delivery_failed_notify(*, delivery_id: int) -> list[int]:
    """Tell the operators (active staff users) that a delivery failed for good; once per failure (a retry
    that fails again is told again)."""
    delivery = Delivery.objects.select_related("destination", "study").get(pk=delivery_id)
    failed = delivery.items.filter(state=DeliveryItem.State.FAILED).count()
    pending = delivery.items.filter(state=DeliveryItem.State.PENDING).count()
    title = f"Delivery to {delivery.destination.name} failed (study {delivery.study_id})"
    body = (
        f"Delivery {delivery.pk} of study {delivery.study_id} (accession {delivery.study.accession_number or '-'}) "
        f"to {delivery.destination.name} failed after {delivery.attempts} attempt(s).\n"
        f"Instances failed: {failed}; not sent: {pending}.\nLast error: {delivery.last_error or '-'}\n"
        f"Retry it from the admin (Deliveries, action 'Retry failed deliveries'): only what is missing is sent."
    )
    key = f"delivery:{delivery.pk}:failure:{delivery.failures}"
    hooks = _webhooks(DELIVERY_FAILED_EVENT, key, delivery.study, destination=delivery.destination.name)
    return hooks + _notify_users(_staff(), event=DELIVERY_FAILED_EVENT, subject_key=key, title=title, body=body)


COMMITMENT_OVERDUE_EVENT = "commitment_overdue"


def commitment_overdue_notify(*, request_id: int) -> list[int]:
    """Tell the operators that a destination accepted a storage commitment request and sent no report within
    its timeout; once per request (the request is asked again; after the last, the delivery fails and that
    is told as any failed delivery)."""
    request = CommitmentRequest.objects.select_related("delivery__destination", "delivery__study").get(pk=request_id)
    delivery = request.delivery
    destination = delivery.destination
    title = f"Storage commitment overdue: {destination.name} (study {delivery.study_id})"
    body = (
        f"{destination.name} ({destination.ae_title}) accepted the storage commitment request "
        f"{request.transaction_uid} for delivery {delivery.pk} of study {delivery.study_id} (accession "
        f"{delivery.study.accession_number or '-'}, {len(request.references)} instance(s)) and sent no report "
        f"within {destination.commitment_timeout} s. Asked again (attempt {request.attempts} of "
        f"{COMMITMENT_MAX_ATTEMPTS}); its files are kept until it commits. Check that it knows this router's AE "
        "title, host and port to send its report to (docs/storage-commitment.md)."
    )
    key = f"commitment:{request.pk}:overdue"
    hooks = _webhooks(COMMITMENT_OVERDUE_EVENT, key, delivery.study, destination=destination.name)
    return hooks + _notify_users(_staff(), event=COMMITMENT_OVERDUE_EVENT, subject_key=key, title=title, body=body)


DELIVERY_HELD_EVENT = "delivery_held"


def delivery_held_notify(*, delivery_id: int) -> list[int]:
    """Tell the operators that a destination's transform held instances (reasons name rules, never values);
    once per delivery and count held."""
    delivery = Delivery.objects.select_related("destination", "study").get(pk=delivery_id)
    held = delivery.items.filter(state=DeliveryItem.State.HELD)
    count = held.count()
    reason = held.values_list("error", flat=True).first() or "-"
    title = f"Delivery to {delivery.destination.name}: {count} instance(s) held by its transform"
    body = (
        f"Delivery {delivery.pk} of study {delivery.study_id} to {delivery.destination.name}: {count} instance(s) "
        f"were not sent, because the destination's transform refused them (the rest went).\nReason: {reason}\n"
        "Mend the profile or its pseudonym table, then use the admin action 'Retry failed deliveries'; or give "
        "them up (docs/transforms.md)."
    )
    key = f"delivery:{delivery.pk}:held:{count}"
    hooks = _webhooks(DELIVERY_HELD_EVENT, key, delivery.study, destination=delivery.destination.name)
    return hooks + _notify_users(_staff(), event=DELIVERY_HELD_EVENT, subject_key=key, title=title, body=body)


def reconcile_targets(*, now: datetime | None = None, older_than: float | None = None) -> list[tuple[int, str]]:
    """(study id, step) pairs to enqueue again: received instances nobody persisted, and studies whose
    stage has not moved for `older_than` seconds. Each returned study is touched, so the next tick
    leaves it alone unless it is still stuck one period later."""
    now = now or clock.now()
    cutoff = now - timedelta(seconds=older_than if older_than is not None else settings.RECONCILE_AFTER)
    targets: dict[int, str] = {}
    orphan_uids = (
        ReceivedInstance.objects.filter(state=ReceivedInstance.State.RECEIVED, received_at__lt=cutoff)
        .values_list("study_instance_uid", flat=True)
        .distinct()
    )
    for uid in orphan_uids[:500]:
        study = study_register(study_instance_uid=uid)
        if study.stage_changed_at < cutoff or study.stage == Stage.RECEIVED:
            targets[study.pk] = "persist"
    stuck = Study.objects.filter(stage__in=list(NEXT_STEP), stage_changed_at__lt=cutoff).values_list("id", "stage")
    for study_id, stage in stuck[:500]:
        targets.setdefault(study_id, NEXT_STEP[stage])
    Study.objects.filter(pk__in=list(targets)).update(stage_changed_at=now)
    if targets:
        logger.info("reconcile: %d studies re-enqueued", len(targets))
    return sorted(targets.items())


def unassigned_studies() -> list[int]:
    return list(Study.objects.filter(stage=Stage.UNASSIGNED).order_by("received_at").values_list("id", flat=True)[:200])


def _webhooks(event: str, subject_key: str, study: Study, assignment: Assignment | None = None, **extra) -> list[int]:
    """The same event for webhook endpoints: ids, accession, modality, priority, due time; the patient's
    name only for endpoints approved for PHI."""
    payload = {
        "study_id": study.pk,
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "modality": study.modality,
        "priority": study.priority,
        **extra,
    }
    if assignment is not None:
        payload |= {
            "assignment_id": assignment.pk,
            "radiologist": assignment.radiologist.user.get_username(),
            "acknowledge_due_at": assignment.acknowledge_due_at.isoformat() if assignment.acknowledge_due_at else None,
            "report_due_at": assignment.report_due_at.isoformat() if assignment.report_due_at else None,
        }
    return notification_webhooks(
        event=event, subject_key=subject_key, payload=payload, phi={"patient_name": study.patient_name}
    )


def _staff():
    return get_user_model().objects.filter(is_staff=True, is_active=True)


def _supervisors():
    return get_user_model().objects.filter(groups__name=SUPERVISORS_GROUP, is_active=True)


def _notify_users(users, *, event: str, subject_key: str, title: str, body: str) -> list[int]:
    ids = []
    for user in users:
        channels = [Notification.Channel.IN_APP] + ([Notification.Channel.EMAIL] if user.email else [])
        ids += notification_create(
            event=event, subject_key=subject_key, recipient_id=user.pk, channels=channels, title=title, body=body
        )
    return ids


def escalation_notify(*, action: EscalationAction) -> list[int]:
    """Tell whoever each escalation step concerns: the reader (remind), the new reader (reassign), the
    supervisors (supervisors). Ids and accession only. Events: `stat_reminder`, `stat_reassigned`,
    `stat_escalated` (the priority's name in front: `urgent_reminder` for an URGENT policy)."""
    step, assignment = action.step, action.assignment
    study = assignment.study
    what = f"{study.priority} study {study.pk} (accession {study.accession_number or '-'}, {study.modality or '-'})"
    due = f"acknowledge was due {assignment.acknowledge_due_at:%H:%M} UTC"
    key = f"escalation:{step.pk}"
    suffix = {"remind": "reminder", "reassign": "reassigned", "supervisors": "escalated"}[step.action]
    event = f"{study.priority.lower()}_{suffix}"
    hooks = _webhooks(event, key, study, assignment, level=step.level)
    if step.action == EscalationPolicy.Action.REMIND:
        return hooks + _notify_users(
            [assignment.radiologist.user],
            event=event,
            subject_key=key,
            title=f"Reminder: {what} waits for you",
            body=f"{what} is not acknowledged; {due}.",
        )
    if step.action == EscalationPolicy.Action.REASSIGN:
        if step.detail.startswith("no other"):
            return hooks
        title, body = assignment_message(assignment)
        return hooks + _notify_users(
            [assignment.radiologist.user],
            event=event,
            subject_key=key,
            title=f"Reassigned to you: {title}",
            body=body,
        )
    return hooks + _notify_users(
        _supervisors(),
        event=event,
        subject_key=key,
        title=f"Escalation: {what} not acknowledged",
        body=f"{what} is still not acknowledged by {assignment.radiologist.display_name}; {due}.",
    )


def sla_notify(*, event: SlaEvent) -> list[int]:
    """At risk: the reader is told; breached: the reader and the supervisors."""
    assignment = event.assignment
    study = assignment.study
    what = f"{study.priority} study {study.pk} (accession {study.accession_number or '-'})"
    label = event.kind.replace("_", " ")
    users = [assignment.radiologist.user]
    if event.kind.endswith("breached"):
        users += list(_supervisors())
    hooks = _webhooks(f"sla_{event.kind}", f"sla:{event.pk}", study, assignment)
    return hooks + _notify_users(
        users,
        event=f"sla_{event.kind}",
        subject_key=f"sla:{event.pk}",
        title=f"SLA {label}: {what}",
        body=f"{what}: {label}; target {event.due_at:%Y-%m-%d %H:%M} UTC.",
    )


def privileges_expiring_notify(*, within_days: int = 14) -> list[int]:
    """Warn the admins (staff users), once per privilege, of reading privileges about to expire."""
    ids = []
    for privilege in privileges_expiring(within_days=within_days):
        ids += _notify_users(
            _staff(),
            event="privilege_expiring",
            subject_key=f"privilege:{privilege.pk}:{privilege.expires_on}",
            title=f"Privilege of {privilege.radiologist.display_name} for {privilege.institution} expires soon",
            body=f"{privilege.radiologist.display_name} may read for {privilege.institution} until "
            f"{privilege.expires_on:%Y-%m-%d}; renew it in the admin (Radiologists, privileges).",
        )
    return ids


DESTINATION_PAUSED_EVENT = "destination_paused"
CERTIFICATE_EXPIRING_EVENT = "certificate_expiring"


def destination_paused_notify(*, destination_id: int) -> list[int]:
    """A destination was paused for a configuration error: staff and webhook endpoints are told, once per
    pause. Its deliveries wait, nothing is lost; the admin's "Resume" (or saving it) sends them."""
    destination = Destination.objects.filter(pk=destination_id).exclude(config_error="").first()
    if destination is None:
        return []
    key = f"destination-paused:{destination.pk}:{destination.config_error_at:%Y%m%d%H%M%S}"
    if Notification.objects.filter(event=DESTINATION_PAUSED_EVENT, subject_key=key).exists():
        return []  # told already
    title = f"Destination {destination.name} paused: configuration error"
    body = (
        f"Deliveries to {destination.name} ({destination.ae_title} at {destination.host}:{destination.port}) are "
        f"paused: {destination.config_error}. No retry mends this; they wait, nothing is lost. Fix the "
        "configuration (docs/security.md), then save the destination or use the admin action Resume."
    )
    payload = {"destination": destination.name, "error": destination.config_error}
    hooks = notification_webhooks(event=DESTINATION_PAUSED_EVENT, subject_key=key, payload=payload)
    return hooks + _notify_users(_staff(), event=DESTINATION_PAUSED_EVENT, subject_key=key, title=title, body=body)


def certificates_expiring_notify(*, now: datetime | None = None) -> list[int]:
    """Certificates that expire within TLS_EXPIRY_WARNING_DAYS (the SCP's own, each destination's client
    certificate and the one each destination presented): staff are told once per certificate."""
    now = now or clock.now()
    horizon = now + timedelta(days=settings.TLS_EXPIRY_WARNING_DAYS)
    ids = []
    for what, facts in _certificates_in_use():
        key = f"certificate:{facts.fingerprint[:48]}"
        if (
            facts.not_after > horizon
            or Notification.objects.filter(event=CERTIFICATE_EXPIRING_EVENT, subject_key=key).exists()
        ):
            continue
        state = "expired" if facts.not_after <= now else "expires"
        ids += _notify_users(
            _staff(),
            event=CERTIFICATE_EXPIRING_EVENT,
            subject_key=key,
            title=f"TLS certificate {state} {facts.not_after:%Y-%m-%d}: {what}",
            body=f"The certificate of {what} ({facts.subject}) {state} on {facts.not_after:%Y-%m-%d %H:%M} UTC. "
            "Renew it; the SCP reads new files without a restart (docs/security.md).",
        )
    return ids


def _certificates_in_use() -> list[tuple[str, tls.CertificateFacts]]:
    files = []
    if settings.SCP_TLS_PORT and settings.SCP_TLS_CERT:
        files.append(("this router's SCP", settings.SCP_TLS_CERT))
    for destination in Destination.objects.filter(enabled=True, tls_enabled=True).exclude(tls_cert_file=""):
        files.append((f"our client certificate for {destination.name}", destination.tls_cert_file))
    found = []
    for what, path in files:
        try:
            found.append((what, tls.certificate_file_facts(path)))
        except tls.TlsFileError as exc:
            logger.warning("certificate of %s cannot be read: %s", what, exc)
    for destination in Destination.objects.filter(enabled=True, tls_enabled=True, tls_peer_not_after__isnull=False):
        facts = tls.CertificateFacts(
            subject="as presented to us",
            fingerprint=destination.tls_peer_fingerprint,
            not_after=destination.tls_peer_not_after,
        )
        found.append((f"destination {destination.name}", facts))
    return found


STORAGE_LOW_EVENT = "storage_low"


def storage_low_notify(*, now: datetime | None = None) -> list[int]:
    """Below the free-space watermark the SCP answers C-STORE with 0xA700 (senders retry later): tell the
    admins (staff users) and webhook endpoints, once a day while it lasts. Healthz and /metrics show it live."""
    free = ops_services.free_bytes()
    if free is None or free >= settings.STORAGE_MIN_FREE_BYTES:
        return []
    key = f"storage:{(now or clock.now()):%Y-%m-%d}"
    title = "Storage below its free-space watermark: the SCP is refusing new instances"
    body = (
        f"{free // 2**20} MiB free, watermark {settings.STORAGE_MIN_FREE_BYTES // 2**20} MiB. Senders get 0xA700 "
        "(out of resources) and retry; free space or grow the volume."
    )
    hooks = notification_webhooks(
        event=STORAGE_LOW_EVENT,
        subject_key=key,
        payload={"free_bytes": free, "watermark_bytes": settings.STORAGE_MIN_FREE_BYTES},
    )
    logger.error("storage below its free-space watermark: %d bytes free", free)
    return hooks + _notify_users(_staff(), event=STORAGE_LOW_EVENT, subject_key=key, title=title, body=body)


STORAGE_EMERGENCY_EVENT = "storage_emergency_purge"


def storage_emergency_notify(*, report: PurgeReport) -> list[int]:
    """An emergency purge started an episode: staff and webhook endpoints are told, once per episode."""
    episode = report.episode_started
    if episode is None:
        return []
    key = f"storage-emergency:{episode.pk}"
    freed = sum(report.bytes_freed.values())
    title = "Storage emergency: files purged before their retention to keep receiving"
    body = (
        f"Free space fell to {episode.free_bytes // 2**20} MiB, below the emergency threshold of "
        f"{emergency_threshold() // 2**20} MiB. The purge removed {report.files} delivered files "
        f"({freed // 2**20} MiB) oldest first, ignoring their retention; {report.free_bytes // 2**20} MiB free now, "
        f"{report.purgeable_bytes // 2**20} MiB more could go. Nothing undelivered, held or protected is purged: "
        "if space stays low, grow the volume or look at failed deliveries (docs/storage.md)."
    )
    payload = {
        "free_bytes_at_start": episode.free_bytes,
        "free_bytes": report.free_bytes,
        "bytes_purged": freed,
        "files_purged": report.files,
        "purgeable_bytes_left": report.purgeable_bytes,
    }
    hooks = notification_webhooks(event=STORAGE_EMERGENCY_EVENT, subject_key=key, payload=payload)
    return hooks + _notify_users(_staff(), event=STORAGE_EMERGENCY_EVENT, subject_key=key, title=title, body=body)


# A file renamed into place is recorded within milliseconds; one unrecorded for this long never will be.
ORPHAN_AFTER = 600.0


def storage_sweep(*, hours: int = 48, older_than: float = ORPHAN_AFTER) -> int:
    """Remove instance files no received-instance row names: an SCP killed between putting the file in
    place and committing its row (the sender got no success and sends again). Returns how many."""
    spool = Spool(settings.STORAGE_ROOT)
    spool.sweep()  # and temp files nobody will finish
    candidates = spool.recent_files(hours=hours, older_than=older_than)
    removed = 0
    for start in range(0, len(candidates), 500):
        batch = candidates[start : start + 500]
        known = set(ReceivedInstance.objects.filter(path__in=batch).values_list("path", flat=True))
        for relative in set(batch) - known:
            spool.remove(relative)
            removed += 1
    if removed:
        logger.warning("storage sweep: removed %d instance files no row names", removed)
    return removed
