from datetime import UTC, datetime, time

import pytest
from django.contrib.auth.models import User

from apps.reading.models import Assignment, Radiologist, Shift
from apps.reading.services import study_assign
from apps.studies.models import Stage, Study

pytestmark = pytest.mark.django_db

MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def reader(username, specialty="neuroradiology", *, status="online", start=time(8), end=time(17), tz="UTC"):
    r = Radiologist.objects.create(
        user=User.objects.create(username=username, email=f"{username}@example.org"),
        display_name=username.title(),
        specialty=specialty,
        status=status,
    )
    Shift.objects.create(radiologist=r, weekdays="mon,tue,wed,thu,fri", start=start, end=end, timezone=tz)
    return r


def study(uid="1.2.3", specialty="neuroradiology", stage=Stage.ROUTED):
    return Study.objects.create(study_instance_uid=uid, specialty=specialty, stage=stage)


def test_it_assigns_the_on_shift_reader_of_the_specialty_with_the_fewest_open_studies():
    busy, free = reader("busy"), reader("free")
    reader("chest", specialty="cardiothoracic")
    Assignment.objects.create(study=study("9.9"), radiologist=busy)
    s = study()
    assignment = study_assign(study_id=s.pk, now=MONDAY_NOON)
    assert assignment.radiologist == free
    s.refresh_from_db()
    assert s.stage == Stage.ASSIGNED
    explanation = assignment.explanation
    assert [e["name"] for e in explanation["eligible"]] == ["Free", "Busy"]
    assert explanation["excluded"] == []


def test_ties_break_by_id_so_the_choice_is_deterministic():
    first, _ = reader("first"), reader("second")
    assert study_assign(study_id=study().pk, now=MONDAY_NOON).radiologist == first


def test_nobody_eligible_leaves_the_study_unassigned_with_the_reasons():
    reader("offline", status="offline")
    reader("nights", start=time(19), end=time(7))
    s = study()
    assert study_assign(study_id=s.pk, now=MONDAY_NOON) is None
    s.refresh_from_db()
    assert s.stage == Stage.UNASSIGNED
    assert "Offline offline" in s.stage_detail and "Nights not on shift" in s.stage_detail


def test_an_unassigned_study_is_assigned_when_someone_comes_on_shift():
    s = study()
    assert study_assign(study_id=s.pk, now=MONDAY_NOON) is None
    reader("late")
    assert study_assign(study_id=s.pk, now=MONDAY_NOON).radiologist.display_name == "Late"


def test_a_study_is_never_assigned_twice():
    reader("one")
    s = study()
    first = study_assign(study_id=s.pk, now=MONDAY_NOON)
    Study.objects.filter(pk=s.pk).update(stage=Stage.ROUTED)  # as after late instances
    assert study_assign(study_id=s.pk, now=MONDAY_NOON) == first
    assert Assignment.objects.count() == 1


def test_the_database_refuses_a_second_open_assignment():
    from django.db import IntegrityError

    r = reader("one")
    s = study()
    Assignment.objects.create(study=s, radiologist=r)
    with pytest.raises(IntegrityError):
        Assignment.objects.create(study=s, radiologist=r)


def test_a_reader_at_capacity_is_excluded_and_says_so():
    full = reader("full")
    Radiologist.objects.filter(pk=full.pk).update(capacity=1.0)
    Assignment.objects.create(study=study("9.9"), radiologist=full)
    s = study()
    assert study_assign(study_id=s.pk, now=MONDAY_NOON) is None
    s.refresh_from_db()
    assert "Full at capacity (1 of 1)" in s.stage_detail


def test_workload_is_weighted_not_counted():
    heavy, light = reader("heavy"), reader("light")
    Assignment.objects.create(study=Study.objects.create(study_instance_uid="9.1", workload=3.0), radiologist=heavy)
    for n in range(2):
        Assignment.objects.create(
            study=Study.objects.create(study_instance_uid=f"9.2.{n}", workload=0.3), radiologist=light
        )
    assert study_assign(study_id=study().pk, now=MONDAY_NOON).radiologist == light  # 0.6 of work beats 3.0


def test_subspecialty_seniority_for_stat_and_the_same_patient_shape_the_score():
    general, head_neck, senior = reader("general"), reader("headneck"), reader("senior")
    Radiologist.objects.filter(pk=head_neck.pk).update(subspecialty="head_and_neck")
    Radiologist.objects.filter(pk=senior.pk).update(seniority=15)
    sub = Study.objects.create(
        study_instance_uid="1.1", specialty="neuroradiology", subspecialty="head_and_neck", stage=Stage.ROUTED
    )
    chosen = study_assign(study_id=sub.pk, now=MONDAY_NOON)
    assert chosen.radiologist == head_neck
    assert chosen.explanation["chosen"]["breakdown"]["subspecialty"] == 0.3
    stat = Study.objects.create(
        study_instance_uid="1.2", specialty="neuroradiology", priority="STAT", stage=Stage.ROUTED
    )
    assert study_assign(study_id=stat.pk, now=MONDAY_NOON).radiologist == senior
    earlier = Study.objects.create(study_instance_uid="1.3", patient_id="P7", specialty="neuroradiology")
    Assignment.objects.create(study=earlier, radiologist=general)
    same = Study.objects.create(
        study_instance_uid="1.4", patient_id="P7", specialty="neuroradiology", stage=Stage.ROUTED
    )
    assert study_assign(study_id=same.pk, now=MONDAY_NOON).radiologist == general


def queries_for_one_decision(readers: int, uid: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(readers):
        reader(f"{uid}-r{n}")
    s = study(uid)
    with CaptureQueriesContext(connection) as captured:
        assert study_assign(study_id=s.pk, now=MONDAY_NOON) is not None
    return len(captured)


def test_one_assignment_decision_costs_the_same_queries_for_5_or_50_readers():
    few = queries_for_one_decision(5, "5.5")
    many = queries_for_one_decision(50, "6.6")
    assert few == many, (few, many)


def test_studies_per_hour_limit_recent_activity_and_turnaround_shape_the_choice():
    from datetime import timedelta

    busy, fast, capped = reader("busy"), reader("fast"), reader("capped")
    Radiologist.objects.filter(pk=capped.pk).update(max_per_hour=1)
    for n, r in enumerate((busy, busy, capped)):  # assigned in the last hour, already completed
        Assignment.objects.create(
            study=study(f"8.{n}"),
            radiologist=r,
            assigned_at=MONDAY_NOON - timedelta(minutes=30),
            status="completed",
            completed_at=MONDAY_NOON - timedelta(minutes=10),
        )
    Assignment.objects.create(
        study=study("8.9"),
        radiologist=fast,
        assigned_at=MONDAY_NOON - timedelta(days=2),
        status="completed",
        completed_at=MONDAY_NOON - timedelta(days=2) + timedelta(hours=1),
    )
    chosen = study_assign(study_id=study().pk, now=MONDAY_NOON)
    assert chosen.radiologist == fast
    breakdown = {e["name"]: e["breakdown"] for e in chosen.explanation["eligible"]}
    assert breakdown["Busy"]["recent_activity"] == -0.1
    assert breakdown["Fast"]["turnaround"] == 0.096
    assert [e["reason"] for e in chosen.explanation["excluded"]] == ["1 studies in the last hour (limit 1)"]


def test_a_shift_that_sets_readers_online_counts_them_online():
    night = reader("night", status="offline")
    Shift.objects.filter(radiologist=night).update(sets_online=True)
    assert study_assign(study_id=study().pk, now=MONDAY_NOON).radiologist == night
