"""Reports and charts over many studies: the routing report (API), a study's timeline and the staff
dashboard. Each takes a fixed number of queries, however many studies, deliveries or assignments it covers
(tests/pipeline/test_reports.py counts them)."""

import math

from django.db.models import Count

from apps.notifications.models import Notification
from apps.routing.models import Delivery
from apps.studies.models import FileState, PurgeReason, ReceivedInstance, Study


def _iso(value) -> str | None:
    return value.isoformat() if value else None


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


def study_timeline(*, study_id: int) -> list[tuple]:
    """Everything that happened to a study, in time order: (time, what, detail)."""
    from apps.reading.models import Assignment, EscalationStep
    from apps.routing.models import RoutingDecision

    study = Study.objects.get(pk=study_id)
    received = ReceivedInstance.objects.filter(study_instance_uid=study.study_instance_uid).order_by("received_at")
    events = [
        (r.received_at, "received", f"instance {r.pk} from {r.calling_ae_title or '-'} ({r.state})") for r in received
    ]
    quality = getattr(study, "quality", None)
    if quality:
        events.append((quality.assessed_at, "quality control", quality.verdict))
        if quality.decided_at:
            events.append((quality.decided_at, f"QC {quality.verdict}", quality.decided_by))
    for decision in RoutingDecision.objects.filter(study=study):
        events.append((decision.decided_at, "routed", ", ".join(decision.destinations) or "unrouted"))
    for delivery in study.deliveries.select_related("destination"):
        events.append((delivery.created_at, "delivery queued", delivery.destination.name))
        if delivery.delivered_at:
            events.append(
                (
                    delivery.delivered_at,
                    "delivered",
                    f"{delivery.destination.name} after {delivery.attempts} attempt(s)",
                )
            )
        elif delivery.state == Delivery.State.FAILED:
            events.append((delivery.next_attempt_at, "delivery failed", delivery.last_error[:120]))
    events += _prior_events(study)
    for assignment in (
        Assignment.objects.filter(study=study).select_related("radiologist").prefetch_related("sla_events")
    ):
        name = assignment.radiologist.display_name
        events.append((assignment.assigned_at, "assigned", name))
        for when, what in (
            (assignment.acknowledged_at, "acknowledged"),
            (assignment.started_at, "started"),
            (assignment.completed_at, "completed"),
            (assignment.updated_at, "updated"),
        ):
            if when:
                events.append((when, what, name))
        events += [(e.occurred_at, "SLA", e.get_kind_display()) for e in assignment.sla_events.all()]
    events += [
        (s.done_at, f"escalation {s.level}", s.get_action_display() + (f": {s.detail}" if s.detail else ""))
        for s in EscalationStep.objects.filter(study=study)
    ]
    notifications = Notification.objects.filter(subject_key__startswith="assignment:").filter(
        subject_key__in=[f"assignment:{a}" for a in study.assignments.values_list("id", flat=True)]
    )
    events += [(n.sent_at or n.created_at, f"notified ({n.channel})", n.event) for n in notifications]
    purged = study.instances.exclude(file_state=FileState.STORED).values_list("purged_at", "purge_reason")
    for at, reason, n in purged.annotate(n=Count("id")).order_by("purged_at"):
        events.append((at, "files purged", f"{n} instance file(s): {PurgeReason(reason).label}"))
    return sorted((e for e in events if e[0] is not None), key=lambda e: e[0])


def timeline_steps(events: list[tuple]) -> list[dict]:
    """The timeline's events with the time since the step before and since the first (seconds, to the
    microsecond the rows hold)."""
    steps = []
    for n, (when, what, detail) in enumerate(events):
        steps.append(
            {
                "when": when,
                "what": what,
                "detail": detail,
                "gap": (when - events[n - 1][0]).total_seconds() if n else None,
                "since_first": (when - events[0][0]).total_seconds(),
            }
        )
    return steps


def _prior_events(study: Study) -> list[tuple]:
    """Priors fetched for the study from an archive (marked as priors: they are never the study's own
    instances, and nobody is assigned to read them)."""
    from apps.priors.models import PriorFetch, PriorStudy

    events = []
    fetches = PriorFetch.objects.filter(study=study).select_related("rule__archive", "destination")
    for fetch in fetches.prefetch_related("priors").order_by("id"):
        route = f"from {fetch.rule.archive.name} to {fetch.destination.name}"
        events.append((fetch.created_at, "prior fetch queued", f"rule {fetch.rule.name}, {route}"))
        for prior in fetch.priors.all():
            if prior.state == PriorStudy.State.MOVED:
                what = f"{prior.study_instance_uid} {route} ({prior.reason})"
                events.append((prior.moved_at, "prior fetched", what))
            elif prior.state == PriorStudy.State.ALREADY_THERE:
                what = f"{prior.study_instance_uid} already at {fetch.destination.name} ({prior.reason})"
                events.append((fetch.queried_at, "prior already there", what))
        if fetch.state == PriorFetch.State.FAILED:
            events.append((fetch.finished_at, "prior fetch failed", f"{route}: {fetch.error[:120]}"))
        elif fetch.state == PriorFetch.State.DONE and not fetch.priors.all():
            events.append((fetch.finished_at, "prior fetch done", f"{route}: {fetch.detail}"))
        elif fetch.state == PriorFetch.State.PENDING and fetch.error:
            events.append((fetch.next_attempt_at, "prior fetch retry due", f"{route}: {fetch.error[:120]}"))
    return events


CHART_LABELS = 210  # px for the category labels left of the plot
CHART_PLOT = 380  # px of the value axis
CHART_ROW = 24  # px per bar
CHART_TOP = 24  # px above the bars, for the title of the category axis


def _axis(top: float, percent: bool, counts: bool = False) -> tuple[float, list[float]]:
    """A value axis that ends on a round number above `top`, with four or five round ticks (whole ones for
    counts)."""
    if percent:
        return 100.0, [0, 25, 50, 75, 100]
    if top <= 0:
        return 1.0, [0, 1]
    raw = top / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if counts:
        step = max(1, math.ceil(step))
    end = step * math.ceil(top / step)
    return round(end, 6), [round(step * n, 6) for n in range(int(round(end / step)) + 1)]


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


def _chart(title: str, unit: str, bars: list[tuple[str, float]], *, categories: str, values: str) -> dict:
    """A horizontal bar chart as geometry for the SVG of the dashboard: bars, a value axis with round ticks,
    both axes titled (`categories` names what the bars are, `values` what they measure, with the unit)."""
    top = max((v for _, v in bars), default=0)
    end, ticks = _axis(top, unit == "%", counts=not unit)
    plot_bottom = CHART_TOP + CHART_ROW * len(bars) + 6
    return {
        "title": title,
        "unit": unit,
        "categories": categories,
        "values": values,
        "bars": [
            {
                "label": label,
                "value": round(v, 1),
                "width": round(CHART_PLOT * v / end),
                "y": CHART_TOP + CHART_ROW * n + 4,
            }
            for n, (label, v) in enumerate(bars)
        ],
        "ticks": [{"x": CHART_LABELS + round(CHART_PLOT * t / end), "label": _number(t)} for t in ticks],
        "x0": CHART_LABELS,
        "x1": CHART_LABELS + CHART_PLOT,
        "plot_bottom": plot_bottom,
        "tick_label_y": plot_bottom + 18,
        "axis_title_y": plot_bottom + 40,
        "axis_title_x": CHART_LABELS + CHART_PLOT // 2,
        "width": CHART_LABELS + CHART_PLOT + 90,
        "height": plot_bottom + 50,
    }


def dashboard(*, now, days: int) -> list[dict]:
    """Four charts over the `days` days up to `now`, as bars the page draws in SVG (no script, no CDN)."""
    import statistics
    from datetime import timedelta

    from django.db.models import Count

    from apps.reading.models import Assignment
    from apps.reading.selectors import sla_compliance

    start = now - timedelta(days=days)
    done = Assignment.objects.filter(completed_at__gte=start, completed_at__lt=now).select_related("study")
    by_priority: dict[str, list[float]] = {}
    for a in done:
        by_priority.setdefault(a.study.priority or "ROUTINE", []).append(
            (a.completed_at - a.study.received_at).total_seconds() / 60
        )
    turnaround = [(p, statistics.median(v)) for p, v in sorted(by_priority.items())]
    deliveries = [
        (f"{name} / {state}", n)
        for name, state, n in Delivery.objects.filter(created_at__gte=start, created_at__lt=now)
        .values_list("destination__name", "state")
        .annotate(n=Count("id"))
        .order_by("destination__name", "state")
    ]
    open_work = list(
        Assignment.objects.filter(status__in=Assignment.OPEN)
        .values_list("radiologist__display_name")
        .annotate(n=Count("id"))
        .order_by("radiologist__display_name")
    )
    compliance = []
    for offset in range(days - 1, -1, -1):
        day_start = (now - timedelta(days=offset)).replace(hour=0, minute=0, second=0, microsecond=0)
        rows = sla_compliance(start=day_start, end=day_start + timedelta(days=1), by="priority")
        total = sum(r["assignments"] for r in rows)
        if total:
            compliance.append((f"{day_start:%m-%d}", 100 * sum(r["ack_met"] for r in rows) / total))
    return [
        _chart(
            "Median turnaround, receipt to report, by priority",
            "min",
            turnaround,
            categories="Priority",
            values="Median minutes from receipt to report",
        ),
        _chart(
            "Deliveries by destination and state",
            "",
            deliveries,
            categories="Destination / state",
            values="Deliveries created in the period",
        ),
        _chart(
            "Open assignments per radiologist",
            "",
            open_work,
            categories="Radiologist",
            values="Open assignments now",
        ),
        _chart(
            "Acknowledged within SLA, by day",
            "%",
            compliance,
            categories="Day (UTC)",
            values="% of the day's assignments acknowledged in time",
        ),
    ]
