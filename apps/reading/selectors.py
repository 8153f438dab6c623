"""Reads on the reading workflow: the worklist, its change marker, the supervisor board, SLA compliance."""

import hashlib
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from django.db.models import Case, Count, IntegerField, Max, Q, Sum, Value, When

from apps.core import clock
from apps.studies.models import Stage, Study

from .models import Assignment, Radiologist, WorklistPreference
from .worklist_filters import WorklistFilters

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


def _rank():
    return Case(
        When(study__priority="STAT", then=Value(0)),
        When(study__priority="URGENT", then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )


def _row(assignment: Assignment, now: datetime) -> dict:
    due = assignment.acknowledge_due_at if assignment.acknowledged_at is None else assignment.report_due_at
    quality = getattr(assignment.study, "quality", None)
    return {
        "assignment": assignment,
        "study": assignment.study,
        "due": due,
        # The page counts down from the due time itself (epoch ms), so a row fetched late is still right.
        "due_ms": int(due.timestamp() * 1000) if due else None,
        "seconds_left": int((due - now).total_seconds()) if due else None,
        "sla": _sla_mark(assignment, due, now),
        "qc_flags": [c["check"] for c in quality.failed] if quality else [],
    }


def worklist(*, user, sees_everything: bool, now: datetime, filters: WorklistFilters | None = None) -> dict:
    """The rows of a worklist: a reader's own open assignments, or every open one for a supervisor, STAT
    first then by acknowledge due time, narrowed by the user's filters; plus, for supervisors, the unassigned
    and held studies."""
    filters = filters or WorklistFilters()
    open_assignments = (
        Assignment.objects.filter(status__in=Assignment.OPEN)
        .filter(filters.query())
        .select_related("study__quality", "radiologist")
        .prefetch_related("sla_events")
    )
    if not sees_everything:
        open_assignments = open_assignments.filter(radiologist__user=user)
    rows = [_row(a, now) for a in open_assignments.annotate(rank=_rank()).order_by("rank", "acknowledge_due_at", "id")]
    result = {"rows": rows, "stat_count": sum(1 for r in rows if r["study"].priority == "STAT")}
    if sees_everything:
        result["unassigned"] = list(Study.objects.filter(stage=Stage.UNASSIGNED).order_by("received_at")[:100])
        result["held"] = list(Study.objects.filter(stage=Stage.HELD).order_by("received_at")[:100])
    return result


def worklist_marker(
    *, user, sees_everything: bool, viewer_links: Callable[..., dict] | None = None, now: datetime | None = None
) -> str:
    """A short fingerprint of everything a worklist (or, for a supervisor, the board) shows that can change
    without the viewer doing anything: the open assignments (id, status, reader, late instances), the SLA
    events recorded on them and, for supervisors, the unassigned and held studies and the readers (status, on
    shift at `now`). Equal fingerprints: nothing
    to fetch. With `viewer_links`, also which of the studies can be opened in a viewer (a delivery that ends
    after the assignment brings the Open button). Two to four indexed queries; the push endpoint calls it a
    few times a second per open page."""
    open_assignments = Assignment.objects.filter(status__in=Assignment.OPEN)
    if not sees_everything:
        open_assignments = open_assignments.filter(radiologist__user=user)
    fields = ("id", "status", "radiologist_id", "updated_at", "study_id", "last_sla_event")
    rows = list(open_assignments.annotate(last_sla_event=Max("sla_events__id")).order_by("id").values_list(*fields))
    parts: list = list(rows)
    if viewer_links is not None:
        parts.append(sorted(viewer_links(study_ids=[row[4] for row in rows])))
    if sees_everything:
        waiting = Study.objects.filter(stage__in=[Stage.UNASSIGNED, Stage.HELD])
        parts += list(waiting.order_by("id").values_list("id", "stage"))
        # The board's readers: their status, and whether a shift holds them now (a shift opens or closes with
        # no row changing: the clock is part of what the board shows).
        at = now or clock.now()
        parts += [(r.pk, r.status, _on_shift(r, at)) for r in Radiologist.objects.prefetch_related("shifts")]
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _on_shift(reader: Radiologist, at: datetime) -> bool:
    """On one of their shifts at `at`, in each shift's own timezone (prefetch `shifts`)."""
    return any(shift.is_open(at) for shift in reader.shifts.all())


def board(*, now: datetime) -> dict:
    """The supervisor board: every reader with their open work and RVU load (the summed study workload the
    assignment engine balances, against their capacity), the STAT studies nobody has acknowledged yet, the
    open assignments past a due time, and the unassigned and held studies."""
    readers = (
        Radiologist.objects.prefetch_related("shifts")
        .annotate(
            open_count=Count("assignments", filter=Q(assignments__status__in=Assignment.OPEN)),
            open_stat=Count(
                "assignments", filter=Q(assignments__status__in=Assignment.OPEN, assignments__study__priority="STAT")
            ),
            load=Sum("assignments__study__workload", filter=Q(assignments__status__in=Assignment.OPEN)),
        )
        .order_by("display_name")
    )
    open_assignments = (
        Assignment.objects.filter(status__in=Assignment.OPEN)
        .select_related("study__quality", "radiologist")
        .prefetch_related("sla_events")
        .annotate(rank=_rank())
        .order_by("rank", "acknowledge_due_at", "id")
    )
    rows = [_row(a, now) for a in open_assignments]
    waiting = list(Study.objects.filter(stage__in=[Stage.UNASSIGNED, Stage.HELD]).order_by("received_at")[:200])
    return {
        "readers": [
            {
                "reader": r,
                "on_shift": _on_shift(r, now),
                "open_count": r.open_count,
                "open_stat": r.open_stat,
                "load": round(r.load or 0, 1),
                "load_percent": round(100 * (r.load or 0) / r.capacity) if r.capacity else None,
                "breaches": sum(
                    1 for row in rows if row["assignment"].radiologist_id == r.pk and row["sla"] == "breached"
                ),
            }
            for r in readers
        ],
        "stat_waiting": [
            row for row in rows if row["study"].priority == "STAT" and row["assignment"].acknowledged_at is None
        ],
        "breaches": [row for row in rows if row["sla"] == "breached"],
        "open_rows": rows,
        "unassigned": [s for s in waiting if s.stage == Stage.UNASSIGNED],
        "held": [s for s in waiting if s.stage == Stage.HELD],
    }


def preference_of(*, user) -> WorklistPreference:
    """The user's worklist preference; the defaults (unsaved) when they never chose."""
    return WorklistPreference.objects.filter(user=user).first() or WorklistPreference(user=user)
