"""Readers coming and going, privileges, reassignment by hand, and instances that arrive after assignment."""

from datetime import UTC, date, datetime, time

import pytest
from django.contrib.auth.models import User

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.reading.models import Assignment, Privilege, Radiologist, Shift
from apps.reading.services import (
    assignment_reassign,
    privileges_expiring,
    radiologist_status_set,
    study_assign,
)
from apps.studies.models import Stage, Study

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import synthetic_study
from ..support.pipeline import receive, receive_study, run_steps

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def reader(name, **fields):
    r = Radiologist.objects.create(
        user=User.objects.create(username=name), display_name=name, specialty="neuroradiology", **fields
    )
    Shift.objects.create(radiologist=r, weekdays="mon,tue,wed,thu,fri,sat,sun", start=time(0), end=time(23, 59))
    return r


def routed(uid="1.1", institution=""):
    return Study.objects.create(
        study_instance_uid=uid, specialty="neuroradiology", stage=Stage.ROUTED, institution_name=institution
    )


def test_instances_after_assignment_mark_it_updated_and_tell_the_reader_once(storage, tmp_path, default_mapping):
    config_import(ACHEN_ON_SHIFT)
    uid, paths = synthetic_study(tmp_path / "in", count=2)
    study_id = receive_study(storage, paths[:1])
    run_steps(study_id)
    receive(storage, paths[1])
    run_steps(study_id)
    run_steps(study_id)  # a replayed chain tells nobody again
    assignment = Assignment.objects.get()
    assert assignment.updated_at is not None
    updates = Notification.objects.filter(event="study_updated")
    assert updates.count() == 1 and "2 instances" in updates.get().body
    assert Notification.objects.filter(event="study_assigned").count() == 2  # in-app and email, once


def test_a_reader_coming_online_is_offered_the_unassigned_studies(db):
    r = reader("late", status=Radiologist.Status.OFFLINE)
    s = routed()
    assert study_assign(study_id=s.pk, now=NOON) is None
    assert radiologist_status_set(radiologist_id=r.pk, online=True) == [s.pk]
    assert study_assign(study_id=s.pk, now=NOON).radiologist == r


def test_a_reader_going_offline_has_unacknowledged_work_rebalanced(db):
    leaving, staying = reader("leaving"), reader("staying", status=Radiologist.Status.OFFLINE)
    kept = study_assign(study_id=routed("1.1").pk, now=NOON)
    moved = study_assign(study_id=routed("1.2").pk, now=NOON)
    assert kept.radiologist == moved.radiologist == leaving
    Assignment.objects.filter(pk=kept.pk).update(status="acknowledged")
    radiologist_status_set(radiologist_id=staying.pk, online=True)
    assert radiologist_status_set(radiologist_id=leaving.pk, online=False) == [moved.study_id]
    assert study_assign(study_id=moved.study_id, now=NOON).radiologist == staying
    assert Assignment.objects.get(pk=kept.pk).radiologist == leaving  # acknowledged work stays


def test_reassignment_by_hand_goes_to_the_best_other_reader(db):
    a, b = reader("a"), reader("b")
    assignment = study_assign(study_id=routed().pk, now=NOON)
    replacement = assignment_reassign(assignment_id=assignment.pk, now=NOON)
    assert replacement.radiologist != assignment.radiologist
    assert {replacement.radiologist, assignment.radiologist} == {a, b}
    assert Assignment.objects.get(pk=assignment.pk).status == "cancelled"
    assert assignment_reassign(assignment_id=assignment.pk, now=NOON) is None  # a cancelled one stays put


def test_an_expired_privilege_excludes_and_admins_are_warned_ahead_of_expiry(db):
    r = reader("priv")
    Privilege.objects.create(radiologist=r, institution="North", expires_on=date(2026, 11, 20))
    s = routed(institution="North")
    assert study_assign(study_id=s.pk, now=NOON) is None
    s.refresh_from_db()
    assert "no current privilege for North" in s.stage_detail
    Privilege.objects.filter(radiologist=r).update(expires_on=date(2026, 12, 1))
    assert study_assign(study_id=s.pk, now=NOON).radiologist == r
    assert [p.institution for p in privileges_expiring(within_days=14, now=NOON)] == ["North"]
    assert privileges_expiring(within_days=14, now=NOON) == []  # warned once
