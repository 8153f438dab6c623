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


def routing_report(*, start, end) -> dict:
    """Over studies received in [start, end): delivery success rate, average routing time (receipt to
    routing decision), failures by destination, open work per radiologist, SLA compliance by priority."""
    from django.db.models import Avg, Count, F, Q, Sum

    from apps.reading.models import Assignment
    from apps.reading.selectors import sla_compliance
    from apps.routing.models import RoutingDecision

    deliveries = Delivery.objects.filter(study__received_at__gte=start, study__received_at__lt=end)
    total = deliveries.count()
    delivered = deliveries.filter(state=Delivery.State.DELIVERED).count()
    routing = RoutingDecision.objects.filter(study__received_at__gte=start, study__received_at__lt=end).aggregate(
        avg=Avg(F("decided_at") - F("study__received_at"))
    )["avg"]
    failures = dict(
        deliveries.filter(state=Delivery.State.FAILED).values_list("destination__name").annotate(n=Count("id"))
    )
    workload = [
        {"radiologist": name, "open_assignments": n, "open_work": round(work or 0, 2)}
        for name, n, work in Assignment.objects.filter(status__in=Assignment.OPEN)
        .values_list("radiologist__display_name")
        .annotate(n=Count("id"), work=Sum("study__workload"))
        .order_by("radiologist__display_name")
    ]
    return {
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "studies": Study.objects.filter(received_at__gte=start, received_at__lt=end).count(),
        "deliveries": total,
        "delivery_success_rate": round(delivered / total, 3) if total else None,
        "average_routing_seconds": round(routing.total_seconds(), 3) if routing else None,
        "failures_by_destination": failures,
        "workload": workload,
        "sla_compliance": sla_compliance(start=start, end=end, by="priority"),
        "unrouted": Study.objects.filter(
            received_at__gte=start, received_at__lt=end, routing_decision__unrouted=True
        ).count(),
        "held": Study.objects.filter(Q(received_at__gte=start, received_at__lt=end), stage="held").count(),
    }
