"""Reads that span domains: where a study stands (`studystatus`, `senddemo`). Reports and charts: reports.py."""

from django.db.models import Count, Max, Q

from apps.notifications.models import Notification
from apps.routing.models import Delivery, DeliveryItem
from apps.studies.models import FileState, ReceivedInstance, Study


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def study_status(*, study_instance_uid: str) -> dict | None:
    study = Study.objects.filter(study_instance_uid=study_instance_uid).first()
    received = ReceivedInstance.objects.filter(study_instance_uid=study_instance_uid)
    if study is None and not received.exists():
        return None
    counts = {state: received.filter(state=state).count() for state in ReceivedInstance.State.values}
    status = {
        "study_instance_uid": study_instance_uid,
        "received": {"total": sum(counts.values()), **counts},
    }
    if study is None:
        status["stage"] = "received"
        return status
    quality = getattr(study, "quality", None)
    decision = getattr(study, "routing_decision", None)
    assignment = study.assignments.select_related("radiologist").order_by("-assigned_at").first()
    status.update(
        {
            "study_id": study.pk,
            "accession_number": study.accession_number,
            "modalities": study.modalities,
            "body_part": study.body_part,
            "stage": study.stage,
            "stage_detail": study.stage_detail,
            "specialty": study.specialty,
            "priority": study.priority,
            "classification": study.classification,
            "series": study.num_series,
            "instances": study.num_instances,
            "size": study.total_size,
            "files": _files(study),
            "qc": {"verdict": quality.verdict, "checks": quality.checks} if quality else None,
            "routing": (
                {
                    "matched_rules": decision.matched_rules,
                    "destinations": decision.destinations,
                    "unrouted": decision.unrouted,
                }
                if decision
                else None
            ),
            "deliveries": [_delivery(d) for d in _deliveries(study)],
            "assignment": (
                {
                    "id": assignment.pk,
                    "radiologist": assignment.radiologist.display_name,
                    "username": assignment.radiologist.user.get_username(),
                    "status": assignment.status,
                    "assigned_at": _iso(assignment.assigned_at),
                }
                if assignment
                else None
            ),
            "notifications": [
                {
                    "id": n.pk,
                    "event": n.event,
                    "channel": n.channel,
                    "recipient": n.recipient.get_username(),
                    "state": n.state,
                }
                for n in Notification.objects.filter(
                    subject_key__in=[f"assignment:{a}" for a in study.assignments.values_list("id", flat=True)]
                )
                .select_related("recipient")
                .order_by("id")
            ],
        }
    )
    return status


def _files(study: Study) -> dict:
    """The study's files: how many are stored, purged (by reason) and when the last went; protected or not."""
    rows = study.instances.values_list("file_state", "purge_reason").annotate(n=Count("id"), at=Max("purged_at"))
    files = {"protected": study.protected, "stored": 0, "purged": {}, "purged_at": None}
    for state, reason, n, at in rows:
        if state == FileState.STORED:
            files["stored"] += n
        else:  # purging counts as purged: the row is marked, its file is going or gone
            files["purged"][reason] = files["purged"].get(reason, 0) + n
            files["purged_at"] = max(filter(None, [files["purged_at"], _iso(at)]), default=None)
    return files


def _deliveries(study: Study):
    """The study's deliveries with their item counts, in one query."""
    delivered = Q(items__state__in=[DeliveryItem.State.DELIVERED, DeliveryItem.State.WARNING])
    return (
        study.deliveries.select_related("destination")
        .annotate(instances=Count("items"), delivered=Count("items", filter=delivered))
        .order_by("id")
    )


def _delivery(delivery: Delivery) -> dict:
    return {
        "destination": delivery.destination.name,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "instances": delivery.instances,
        "delivered": delivery.delivered,
        "last_error": delivery.last_error,
        "delivered_at": _iso(delivery.delivered_at),
    }
