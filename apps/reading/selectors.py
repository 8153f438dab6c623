"""Reads on the reading workflow: the worklist, SLA compliance over a period."""

from collections import defaultdict
from datetime import datetime

from .models import Assignment

GROUPS = {
    "priority": "study__priority",
    "institution": "study__institution_name",
    "radiologist": "radiologist__display_name",
}


def sla_compliance(*, start: datetime, end: datetime, by: str) -> list[dict]:
    """Assignments made in [start, end) grouped by priority, institution or radiologist: how many, and the
    share acknowledged and completed by their due times (open work past its due time counts as missed)."""
    rows = Assignment.objects.filter(assigned_at__gte=start, assigned_at__lt=end).exclude(
        status=Assignment.Status.CANCELLED
    )
    values = rows.values(GROUPS[by], "acknowledged_at", "acknowledge_due_at", "completed_at", "report_due_at")
    groups: dict[str, dict] = defaultdict(lambda: {"assignments": 0, "ack_met": 0, "report_met": 0})
    for row in values:
        group = groups[row[GROUPS[by]] or "-"]
        group["assignments"] += 1
        if row["acknowledge_due_at"] and row["acknowledged_at"] and row["acknowledged_at"] <= row["acknowledge_due_at"]:
            group["ack_met"] += 1
        if row["report_due_at"] and row["completed_at"] and row["completed_at"] <= row["report_due_at"]:
            group["report_met"] += 1
    return [
        {
            by: name,
            **counts,
            "ack_compliance": round(counts["ack_met"] / counts["assignments"], 3),
            "report_compliance": round(counts["report_met"] / counts["assignments"], 3),
        }
        for name, counts in sorted(groups.items())
    ]


def _sla_mark(assignment: Assignment, due: datetime | None, now: datetime) -> str:
    """Breached once the due time passed; at risk once the SLA sweeper recorded it (the policy's fraction)."""
    if due is not None and due <= now:
        return "breached"
    stage = "ack" if assignment.acknowledged_at is None else "report"
    return "at risk" if any(e.kind == f"{stage}_at_risk" for e in assignment.sla_events.all()) else ""


def worklist(*, user, sees_everything: bool, now: datetime) -> dict:
    """The rows of a worklist: a reader's own open assignments, or every open one for a supervisor, STAT
    first then by acknowledge due time; plus, for supervisors, the unassigned and held studies."""
    from django.db.models import Case, IntegerField, Value, When

    from apps.studies.models import Stage, Study

    open_assignments = (
        Assignment.objects.filter(status__in=Assignment.OPEN)
        .select_related("study__quality", "radiologist")
        .prefetch_related("sla_events")
    )
    if not sees_everything:
        open_assignments = open_assignments.filter(radiologist__user=user)
    rank = Case(
        When(study__priority="STAT", then=Value(0)),
        When(study__priority="URGENT", then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    rows = []
    for assignment in open_assignments.annotate(rank=rank).order_by("rank", "acknowledge_due_at", "id"):
        due = assignment.acknowledge_due_at if assignment.acknowledged_at is None else assignment.report_due_at
        quality = getattr(assignment.study, "quality", None)
        rows.append(
            {
                "assignment": assignment,
                "study": assignment.study,
                "due": due,
                "seconds_left": int((due - now).total_seconds()) if due else None,
                "sla": _sla_mark(assignment, due, now),
                "qc_flags": [c["check"] for c in quality.failed] if quality else [],
            }
        )
    result = {"rows": rows, "stat_count": sum(1 for r in rows if r["study"].priority == "STAT")}
    if sees_everything:
        result["unassigned"] = list(Study.objects.filter(stage=Stage.UNASSIGNED).order_by("received_at")[:100])
        result["held"] = list(Study.objects.filter(stage=Stage.HELD).order_by("received_at")[:100])
    return result
