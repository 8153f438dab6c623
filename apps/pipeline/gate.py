"""Assign after verified delivery: a rule may say its destinations are where the study is read, so the study
is assigned only once each of them has it (delivered, and committed where the destination has storage
commitment). Where routing and reading meet, so it lives here: routing knows no reader, reading no delivery.
"""

from apps.routing.models import Delivery, Destination, RoutingDecision, RoutingRule
from apps.routing.services import delivery_committed
from apps.studies.models import Stage, Study


def reading_destinations(*, study_id: int) -> set[str]:
    """The study's reading destinations: those of its matched rules that assign after delivery."""
    decision = RoutingDecision.objects.filter(study_id=study_id).first()
    if decision is None or decision.unrouted:
        return set()
    rules = RoutingRule.objects.filter(name__in=decision.matched_rules, assign_after_delivery=True)
    return set(
        Destination.objects.filter(rules__in=rules, name__in=decision.destinations).values_list("name", flat=True)
    )


def reading_destinations_waiting(*, study_id: int) -> list[str]:
    """The study's reading destinations that do not have it yet, each with why; empty when all have it or no
    matched rule asks. A delivery an operator gave up no longer holds the study back: they decided it will
    not go."""
    names = reading_destinations(study_id=study_id)
    if not names:
        return []
    deliveries = {
        d.destination.name: d
        for d in Delivery.objects.filter(study_id=study_id, destination__name__in=names).select_related("destination")
    }
    waiting = []
    for name in sorted(names):
        delivery = deliveries.get(name)
        if delivery is None:
            waiting.append(f"{name} (not routed yet)")
        elif delivery.state == Delivery.State.GIVEN_UP or delivery_committed(delivery):
            continue
        elif delivery.state == Delivery.State.DELIVERED:
            waiting.append(f"{name} (delivered, not yet committed)")
        else:
            waiting.append(f"{name} ({delivery.state})")
    return waiting


def study_assign_gate(*, study_id: int) -> str | None:
    """None when the study may be assigned; otherwise the detail it now waits with. The study stays ROUTED
    (its stage time unchanged, so the reconciler looks at it again): nothing failed, it waits."""
    waiting = reading_destinations_waiting(study_id=study_id)
    if not waiting:
        return None
    detail = "waiting for delivery to " + ", ".join(waiting)
    Study.objects.filter(pk=study_id, stage=Stage.ROUTED).update(stage_detail=detail)
    return detail


def study_waiting_for(*, delivery_id: int) -> int | None:
    """The study to assign now that this delivery is verified: one still ROUTED, held back by the gate (this
    delivery goes to a reading destination) and by nothing else any more."""
    delivery = Delivery.objects.filter(pk=delivery_id).select_related("destination").first()
    if delivery is None or not Study.objects.filter(pk=delivery.study_id, stage=Stage.ROUTED).exists():
        return None
    if delivery.destination.name not in reading_destinations(study_id=delivery.study_id):
        return None
    return None if reading_destinations_waiting(study_id=delivery.study_id) else delivery.study_id
