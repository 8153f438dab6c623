"""Reads that span domains: where a study stands."""

from apps.notifications.models import Notification
from apps.routing.models import Delivery, DeliveryItem
from apps.studies.models import ReceivedInstance, Study


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
            "deliveries": [_delivery(d) for d in study.deliveries.select_related("destination").order_by("id")],
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


def _delivery(delivery: Delivery) -> dict:
    items = delivery.items.all()
    return {
        "destination": delivery.destination.name,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "instances": items.count(),
        "delivered": items.filter(state__in=[DeliveryItem.State.DELIVERED, DeliveryItem.State.WARNING]).count(),
        "last_error": delivery.last_error,
        "delivered_at": _iso(delivery.delivered_at),
    }
