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
