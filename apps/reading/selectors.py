"""Reads on the reading workflow: SLA compliance over a period."""

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
    rows = Assignment.objects.filter(assigned_at__gte=start, assigned_at__lt=end).exclude(status="cancelled")
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
