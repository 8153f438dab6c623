"""Writes on reading: assign a study to the best available radiologist."""

import logging
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Count, Q

from apps.core import clock
from apps.studies.models import Stage, Study

from .models import Assignment, Radiologist

logger = logging.getLogger(__name__)


def candidates_rank(radiologists: list[Radiologist], *, specialty: str, at: datetime) -> tuple[list[dict], list[dict]]:
    """Split readers into eligible (fewest open assignments first, then id) and excluded, with reasons.

    Each radiologist carries `open_count` (annotated) and prefetched shifts.
    """
    eligible, excluded = [], []
    for r in radiologists:
        reason = None
        if r.specialty != specialty:
            reason = f"specialty {r.specialty}"
        elif r.status != Radiologist.Status.ONLINE:
            reason = "offline"
        elif not any(shift.is_open(at) for shift in r.shifts.all()):
            reason = "not on shift"
        entry = {"radiologist": r.pk, "name": r.display_name, "open": r.open_count}
        if reason:
            excluded.append({**entry, "reason": reason})
        else:
            eligible.append(entry)
    eligible.sort(key=lambda e: (e["open"], e["radiologist"]))
    return eligible, excluded


def study_assign(*, study_id: int, now: datetime | None = None) -> Assignment | None:
    """Assign a routed study to the on-shift reader of its specialty with the least open work.

    1. A study with an open assignment keeps it (late instances do not assign twice).
    2. Eligible: same specialty, online, on a shift now in the shift's timezone.
    3. Nobody eligible: the study waits as UNASSIGNED, with the reasons; a sweeper tries again.
    """
    now = now or clock.now()
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage not in (Stage.ROUTED, Stage.UNASSIGNED):
            return None
        current = study.assignments.filter(status__in=Assignment.OPEN).first()
        if current is not None:
            study.advance(Stage.ASSIGNED, now=now)
            return current
        readers = list(
            Radiologist.objects.filter(specialty=study.specialty)
            .annotate(open_count=Count("assignments", filter=Q(assignments__status__in=Assignment.OPEN)))
            .prefetch_related("shifts")
        )
        eligible, excluded = candidates_rank(readers, specialty=study.specialty, at=now)
        if not eligible:
            detail = f"no eligible {study.specialty or 'unclassified'} radiologist"
            if excluded:
                detail += ": " + "; ".join(f"{e['name']} {e['reason']}" for e in excluded[:10])
            study.advance(Stage.UNASSIGNED, detail=detail, now=now)
            logger.info("assign: study %s unassigned (%d excluded)", study.pk, len(excluded))
            return None
        chosen = eligible[0]
        try:
            with transaction.atomic():
                assignment = Assignment.objects.create(
                    study=study,
                    radiologist_id=chosen["radiologist"],
                    assigned_at=now,
                    explanation={"chosen": chosen, "eligible": eligible, "excluded": excluded, "rule": "fewest open"},
                )
        except IntegrityError:
            assignment = study.assignments.get(status__in=Assignment.OPEN)
        study.advance(Stage.ASSIGNED, now=now)
    logger.info("assign: study %s -> radiologist %s", study.pk, assignment.radiologist_id)
    return assignment
