"""Writes on reading: assign a study to the best available radiologist."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Avg, Count, F, Q, Sum

from apps.core import clock
from apps.studies.models import Priority, Stage, Study

from .models import (
    Assignment,
    EscalationPolicy,
    EscalationStep,
    Privilege,
    Radiologist,
    SlaEvent,
    SlaPolicy,
    WorklistPreference,
)
from .worklist_filters import WorklistFilters

logger = logging.getLogger(__name__)


SUBSPECIALTY_BONUS = 0.3
SENIORITY_BONUS = 0.02  # per year, for STAT studies, up to 10 years
SAME_PATIENT_BONUS = 1.0  # the reader of the patient's other open study, when eligible
RECENT_PENALTY = 0.05  # per study assigned in the last hour: spreads a burst over the readers
TURNAROUND_BONUS = 0.1  # for a fast median turnaround (assigned to completed) over the last 30 days
RECENT = timedelta(hours=1)
HISTORY = timedelta(days=30)


def candidates_rank(
    radiologists: list[Radiologist], *, study: Study, at: datetime, same_patient: frozenset[int] = frozenset()
) -> tuple[list[dict], list[dict]]:
    """Split readers into eligible, best first, and excluded, each with the reason or the score breakdown.

    Each radiologist carries `open_work` (annotated: the summed workload of their open assignments) and
    prefetched shifts. Ties break on less open work, then id, so the choice is deterministic.
    """
    eligible, excluded = [], []
    for r in radiologists:
        open_work = float(r.open_work or 0)
        entry = {"radiologist": r.pk, "name": r.display_name, "open": round(open_work, 2)}
        reason = None
        if r.specialty != study.specialty:
            reason = f"specialty {r.specialty}"
        elif not (open_shifts := [shift for shift in r.shifts.all() if shift.is_open(at)]):
            reason = "not on shift"
        elif r.status != Radiologist.Status.ONLINE and not any(shift.sets_online for shift in open_shifts):
            reason = "offline"
        elif r.max_per_hour and (r.recent or 0) >= r.max_per_hour:
            reason = f"{r.recent} studies in the last hour (limit {r.max_per_hour})"
        elif not _privileged(r, study.institution_name, at):
            reason = f"no current privilege for {study.institution_name}"
        elif open_work + study.workload > r.capacity:
            reason = f"at capacity ({open_work:g} of {r.capacity:g})"
        if reason:
            excluded.append({**entry, "reason": reason})
            continue
        breakdown = {
            "workload": round(1 - open_work / r.capacity, 3) if r.capacity else 0.0,
            "subspecialty": SUBSPECIALTY_BONUS if study.subspecialty and r.subspecialty == study.subspecialty else 0.0,
            "seniority": SENIORITY_BONUS * min(r.seniority, 10) if study.priority == Priority.STAT else 0.0,
            "same_patient": SAME_PATIENT_BONUS if r.pk in same_patient else 0.0,
            "recent_activity": -RECENT_PENALTY * (r.recent or 0),
            "turnaround": _turnaround_bonus(r.turnaround),
        }
        eligible.append({**entry, "score": round(sum(breakdown.values()), 3), "breakdown": breakdown})
    eligible.sort(key=lambda e: (-e["score"], e["open"], e["radiologist"]))
    return eligible, excluded


def _turnaround_bonus(turnaround: timedelta | None) -> float:
    """Up to TURNAROUND_BONUS for a median report within the hour, nothing past a day or without history."""
    if turnaround is None:
        return 0.0
    return round(TURNAROUND_BONUS * max(0.0, 1 - turnaround / timedelta(hours=24)), 3)


def _privileged(radiologist: Radiologist, institution: str, at: datetime) -> bool:
    privileges = list(radiologist.privileges.all())
    if not privileges:
        return True
    today = at.date()
    return any(p.institution == institution and (p.expires_on is None or p.expires_on >= today) for p in privileges)


def _readers(study: Study, at: datetime):
    """Every reader of the specialty with their open work, recent load and turnaround: one query (and two
    prefetches), whatever their number."""
    return (
        Radiologist.objects.filter(specialty=study.specialty)
        .annotate(
            open_work=Sum("assignments__study__workload", filter=Q(assignments__status__in=Assignment.OPEN)),
            recent=Count("assignments", filter=Q(assignments__assigned_at__gte=at - RECENT), distinct=True),
            turnaround=Avg(
                F("assignments__completed_at") - F("assignments__assigned_at"),
                filter=Q(assignments__completed_at__gte=at - HISTORY),
            ),
        )
        .prefetch_related("shifts", "privileges")
        .order_by("pk")
    )


def _same_patient_readers(study: Study) -> frozenset[int]:
    if not study.patient_id:
        return frozenset()
    return frozenset(
        Assignment.objects.filter(status__in=Assignment.OPEN, study__patient_id=study.patient_id)
        .exclude(study=study)
        .values_list("radiologist_id", flat=True)
    )


def study_assign(*, study_id: int, now: datetime | None = None) -> Assignment | None:
    """Assign a routed study to the best-scored eligible reader of its specialty.

    1. A study with an open assignment keeps it (late instances do not assign twice).
    2. Eligible: same specialty, online, on a shift now in its timezone, under capacity; scored on free
       capacity, subspecialty, seniority for STAT and the patient's other open study (candidates_rank).
    3. Nobody eligible: the study waits as UNASSIGNED, with the reasons; a sweeper tries again.
    """
    now = now or clock.now()
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage not in (Stage.ROUTED, Stage.UNASSIGNED):
            return None
        current = study.assignments.filter(status__in=Assignment.OPEN).first()
        if current is not None:
            # Back here with an open assignment: instances arrived after it (the study was set back).
            current.updated_at = now
            current.save(update_fields=["updated_at"])
            study.advance(Stage.ASSIGNED, now=now)
            return current
        # Lock the readers of the specialty (in id order, so two workers cannot deadlock): capacity is
        # read and taken under the lock, so concurrent assignments never push a reader past it.
        list(Radiologist.objects.select_for_update().filter(specialty=study.specialty).order_by("pk").values("pk"))
        readers = list(_readers(study, now))
        eligible, excluded = candidates_rank(readers, study=study, at=now, same_patient=_same_patient_readers(study))
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
                assignment = Assignment(
                    study=study,
                    radiologist_id=chosen["radiologist"],
                    assigned_at=now,
                    explanation={"chosen": chosen, "eligible": eligible[:20], "excluded": excluded[:50]},
                )
                _set_due_times(assignment, study)
                assignment.save()
        except IntegrityError:
            assignment = study.assignments.get(status__in=Assignment.OPEN)
        study.advance(Stage.ASSIGNED, now=now)
    logger.info("assign: study %s -> radiologist %s", study.pk, assignment.radiologist_id)
    return assignment


def sla_targets(
    *, priority: str, institution: str, policies: list[SlaPolicy]
) -> tuple[timedelta, timedelta, float] | None:
    """(acknowledge, report, at-risk fraction) for a priority: the institution's own row over the default."""
    mine = [p for p in policies if p.priority == priority and p.institution == institution]
    default = [p for p in policies if p.priority == priority and not p.institution]
    chosen = (mine or default or [None])[0]
    if chosen is None:
        return None
    return (
        timedelta(minutes=chosen.acknowledge_minutes),
        timedelta(minutes=chosen.report_minutes),
        chosen.at_risk_fraction,
    )


def _set_due_times(assignment: Assignment, study: Study) -> None:
    targets = sla_targets(
        priority=study.priority or "ROUTINE", institution=study.institution_name, policies=list(SlaPolicy.objects.all())
    )
    if targets is not None:
        assignment.acknowledge_due_at = study.received_at + targets[0]
        assignment.report_due_at = study.received_at + targets[1]


def assignment_acknowledge(*, assignment_id: int, now: datetime | None = None) -> bool:
    now = now or clock.now()
    return bool(
        Assignment.objects.filter(pk=assignment_id, status=Assignment.Status.ASSIGNED).update(
            status=Assignment.Status.ACKNOWLEDGED, acknowledged_at=now
        )
    )


def assignment_start(*, assignment_id: int, now: datetime | None = None) -> bool:
    now = now or clock.now()
    opened = [Assignment.Status.ASSIGNED, Assignment.Status.ACKNOWLEDGED]
    return bool(
        Assignment.objects.filter(pk=assignment_id, status__in=opened).update(
            status=Assignment.Status.IN_PROGRESS, started_at=now
        )
    )


def assignment_complete(*, assignment_id: int, now: datetime | None = None) -> bool:
    now = now or clock.now()
    return bool(
        Assignment.objects.filter(pk=assignment_id, status__in=Assignment.OPEN).update(
            status=Assignment.Status.COMPLETED, completed_at=now
        )
    )


def sla_sweep(*, now: datetime | None = None) -> list[SlaEvent]:
    """Record each SLA threshold an open assignment has crossed, once; returns the new events."""
    now = now or clock.now()
    fractions = {(p.priority, p.institution): p.at_risk_fraction for p in SlaPolicy.objects.all()}
    created = []
    open_assignments = Assignment.objects.filter(status__in=Assignment.OPEN).select_related("study")
    for assignment in open_assignments.exclude(acknowledge_due_at=None).prefetch_related("sla_events"):
        recorded = {event.kind for event in assignment.sla_events.all()}  # a sweep only writes what is new
        study = assignment.study
        fraction = fractions.get((study.priority, study.institution_name), fractions.get((study.priority, ""), 0.8))
        targets = []
        if assignment.acknowledged_at is None:
            targets.append((SlaEvent.Kind.ACK_AT_RISK, SlaEvent.Kind.ACK_BREACHED, assignment.acknowledge_due_at))
        targets.append((SlaEvent.Kind.REPORT_AT_RISK, SlaEvent.Kind.REPORT_BREACHED, assignment.report_due_at))
        for at_risk, breached, due in targets:
            risk_at = study.received_at + (due - study.received_at) * fraction
            for kind, threshold in ((at_risk, risk_at), (breached, due)):
                if now >= threshold and kind not in recorded:
                    event, new = SlaEvent.objects.get_or_create(
                        assignment=assignment, kind=kind, defaults={"due_at": due, "occurred_at": now}
                    )
                    if new:
                        created.append(event)
    return created


@dataclass(frozen=True)
class EscalationAction:
    step: EscalationStep
    assignment: Assignment  # the assignment open after the step (the new one after a reassignment)


def escalation_sweep(*, now: datetime | None = None) -> list[EscalationAction]:
    """Studies nobody acknowledged, of a priority with an escalation policy: take every step whose time has
    come, once each.

    Step k is due at the first assignment's acknowledge target + (k - 1) of the policy's windows, all in UTC,
    so a missed or doubled Beat tick, two Beat processes or a DST change neither skip nor repeat a step.
    """
    now = now or clock.now()
    policies = {p.priority: p for p in EscalationPolicy.objects.filter(enabled=True)}
    actions = []
    waiting = Assignment.objects.filter(
        status=Assignment.Status.ASSIGNED, study__priority__in=list(policies), acknowledge_due_at__lte=now
    ).values_list("study_id", "study__priority")
    for study_id, priority in waiting:
        policy = policies[priority]
        window = timedelta(minutes=policy.window_minutes)
        first = Assignment.objects.filter(study_id=study_id).exclude(acknowledge_due_at=None).order_by("assigned_at")[0]
        for level, step in enumerate(policy.actions, start=1):
            due = first.acknowledge_due_at + (level - 1) * window
            if due > now:
                break
            action = _escalate(study_id, level, step, due, now)
            if action is not None:
                actions.append(action)
    return actions


def _escalate(study_id: int, level: int, step: str, due: datetime, now: datetime) -> EscalationAction | None:
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        current = study.assignments.filter(status=Assignment.Status.ASSIGNED).first()
        if current is None or EscalationStep.objects.filter(study=study, level=level).exists():
            return None  # acknowledged meanwhile, or this step was already taken
        detail = ""
        if step == EscalationPolicy.Action.REASSIGN:
            replacement = _reassign(study, current, now)
            detail = f"reassigned to {replacement.radiologist_id}" if replacement else "no other eligible reader"
            current = replacement or current
        taken = EscalationStep.objects.create(
            study=study, assignment=current, level=level, action=step, due_at=due, done_at=now, detail=detail
        )
    logger.info("escalation: study %s level %s %s %s", study_id, level, step, detail)
    return EscalationAction(step=taken, assignment=current)


def _reassign(study: Study, current: Assignment, now: datetime) -> Assignment | None:
    readers = [r for r in _readers(study, now) if r.pk != current.radiologist_id]
    eligible, _ = candidates_rank(readers, study=study, at=now)
    if not eligible:
        return None
    current.status = Assignment.Status.CANCELLED
    current.save(update_fields=["status"])
    replacement = Assignment(
        study=study,
        radiologist_id=eligible[0]["radiologist"],
        assigned_at=now,
        acknowledge_due_at=current.acknowledge_due_at,
        report_due_at=current.report_due_at,
        explanation={"chosen": eligible[0], "eligible": eligible, "rule": "escalation: next eligible reader"},
    )
    replacement.save()
    return replacement


def radiologist_status_set(*, radiologist_id: int, online: bool, now: datetime | None = None) -> list[int]:
    """A reader comes online or goes offline; returns the studies to (re)assign.

    Online: the unassigned studies of their specialty are tried again at once. Offline: their open
    assignments nobody has acknowledged go back to the pool (cancelled, the study set back to routed), so
    they are rebalanced to the readers still on; acknowledged or started work stays with them.
    """
    now = now or clock.now()
    status = Radiologist.Status.ONLINE if online else Radiologist.Status.OFFLINE
    with transaction.atomic():
        radiologist = Radiologist.objects.select_for_update().get(pk=radiologist_id)
        radiologist.status = status
        radiologist.save(update_fields=["status"])
        if online:
            return list(
                Study.objects.filter(stage=Stage.UNASSIGNED, specialty=radiologist.specialty).values_list(
                    "id", flat=True
                )
            )
        released = []
        for assignment in radiologist.assignments.filter(status=Assignment.Status.ASSIGNED).select_related("study"):
            assignment.status = Assignment.Status.CANCELLED
            assignment.save(update_fields=["status"])
            assignment.study.advance(
                Stage.ROUTED, detail=f"rebalanced: {radiologist.display_name} went offline", now=now
            )
            released.append(assignment.study_id)
    return released


def assignment_reassign(*, assignment_id: int, now: datetime | None = None) -> Assignment | None:
    """Reassign by hand to the best other eligible reader; None (and nothing changed) when there is none."""
    now = now or clock.now()
    with transaction.atomic():
        assignment = Assignment.objects.select_related("study").get(pk=assignment_id)
        study = Study.objects.select_for_update().get(pk=assignment.study_id)
        if assignment.status not in Assignment.OPEN:
            return None
        return _reassign(study, assignment, now)


def privileges_expiring(*, within_days: int = 14, now: datetime | None = None) -> list[Privilege]:
    """Privileges that expire within `within_days` and were not warned about yet; marks them warned."""
    today = (now or clock.now()).date()
    due = list(
        Privilege.objects.filter(
            expires_on__isnull=False,
            expires_on__lte=today + timedelta(days=within_days),
            expires_on__gte=today,
            expiry_warned_on__isnull=True,
        ).select_related("radiologist")
    )
    Privilege.objects.filter(pk__in=[p.pk for p in due]).update(expiry_warned_on=today)
    return due


def assignment_open(*, assignment_id: int, acknowledge_stat: bool, now: datetime | None = None) -> bool:
    """A reader opened the study in the viewer: when they chose so, a STAT assignment nobody acknowledged yet
    is acknowledged by it, through the same transition as the Acknowledge button. True when it was."""
    if not acknowledge_stat:
        return False
    if not Assignment.objects.filter(pk=assignment_id, study__priority=Priority.STAT).exists():
        return False
    return assignment_acknowledge(assignment_id=assignment_id, now=now)


def preference_update(
    *,
    user,
    theme: str | None = None,
    open_acknowledges_stat: bool | None = None,
    filters: WorklistFilters | None = None,
) -> WorklistPreference:
    """Change what is given of a user's worklist preference (theme, open-acknowledges-STAT, filters)."""
    preference, _ = WorklistPreference.objects.get_or_create(user=user)
    changed = []
    if theme is not None and theme in WorklistPreference.Theme.values:
        preference.theme = theme
        changed.append("theme")
    if open_acknowledges_stat is not None:
        preference.open_acknowledges_stat = open_acknowledges_stat
        changed.append("open_acknowledges_stat")
    if filters is not None:
        preference.filters = filters.as_dict()
        changed.append("filters")
    if changed:
        preference.save(update_fields=[*changed, "updated_at"])
    return preference
