"""STAT escalation and SLAs with an injected clock: each step once, on time, whatever Beat or DST do."""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.contrib.auth.models import Group, User

from apps.notifications.models import Notification
from apps.pipeline.services import escalation_notify, sla_notify
from apps.reading.models import Assignment, EscalationStep, Radiologist, Shift, SlaEvent
from apps.reading.services import assignment_acknowledge, escalation_sweep, sla_sweep, study_assign
from apps.studies.models import Stage, Study

pytestmark = pytest.mark.django_db(transaction=True)

# Tuesday 2026-11-24 02:00 UTC is Monday 21:00 in New York: the overnight shift (19:00-07:00) is on.
NIGHT = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


@pytest.fixture
def night_readers(default_mapping, sla_policies, escalation_ladder):
    readers = []
    for name in ("first", "second"):
        r = Radiologist.objects.create(
            user=User.objects.create(username=name, email=f"{name}@example.org"),
            display_name=name.title(),
            specialty="neuroradiology",
        )
        Shift.objects.create(
            radiologist=r,
            weekdays="mon,tue,wed,thu,fri,sat,sun",
            start=time(19),
            end=time(7),
            timezone="America/New_York",
        )
        readers.append(r)
    boss = User.objects.create(username="boss", email="boss@example.org")
    boss.groups.add(Group.objects.create(name="supervisors"))
    return readers


@pytest.fixture
def sla_policies(db):
    from django.apps import apps

    from apps.reading.defaults import DEFAULT_SLA_POLICIES

    model = apps.get_model("reading", "SlaPolicy")
    if not model.objects.exists():
        model.objects.bulk_create(model(**row) for row in DEFAULT_SLA_POLICIES)


def stat_study(at: datetime, uid="1.2.3") -> Assignment:
    study = Study.objects.create(
        study_instance_uid=uid, specialty="neuroradiology", priority="STAT", stage=Stage.ROUTED, received_at=at
    )
    return study_assign(study_id=study.pk, now=at)


def sweep(at: datetime) -> list[tuple[int, str]]:
    actions = escalation_sweep(now=at)
    for action in actions:
        escalation_notify(action=action)
    return [(a.step.level, a.assignment.radiologist.display_name) for a in actions]


def test_an_unacknowledged_stat_study_is_reminded_reassigned_then_escalated_once_each(night_readers):
    assignment = stat_study(NIGHT)
    assert assignment.radiologist.display_name == "First"
    assert assignment.acknowledge_due_at == NIGHT + timedelta(minutes=5)
    assert sweep(NIGHT + timedelta(minutes=4, seconds=59)) == []
    assert sweep(NIGHT + timedelta(minutes=5)) == [(1, "First")]
    assert sweep(NIGHT + timedelta(minutes=5, seconds=30)) == []  # the sweeper again: nothing new
    assert sweep(NIGHT + timedelta(minutes=10)) == [(2, "Second")]
    assert sweep(NIGHT + timedelta(minutes=15)) == [(3, "Second")]
    assert sweep(NIGHT + timedelta(minutes=40)) == []
    assert list(EscalationStep.objects.values_list("level", flat=True)) == [1, 2, 3]
    assert Assignment.objects.get(status="assigned").radiologist.display_name == "Second"
    assert Assignment.objects.get(status="cancelled").radiologist.display_name == "First"
    events = sorted(Notification.objects.filter(channel="in_app").values_list("event", "recipient__username"))
    assert events == [("stat_escalated", "boss"), ("stat_reassigned", "second"), ("stat_reminder", "first")]


def test_beat_down_for_a_while_catches_up_every_due_step_once(night_readers):
    stat_study(NIGHT)
    assert sweep(NIGHT + timedelta(minutes=20)) == [(1, "First"), (2, "Second"), (3, "Second")]
    assert sweep(NIGHT + timedelta(minutes=20)) == []  # a second Beat process ticking at the same time


def test_a_stat_study_acknowledged_in_time_gets_nothing(night_readers):
    assignment = stat_study(NIGHT)
    assert assignment_acknowledge(assignment_id=assignment.pk, now=NIGHT + timedelta(minutes=3))
    assert sweep(NIGHT + timedelta(minutes=30)) == []
    assert not EscalationStep.objects.exists()


def test_a_dst_night_neither_skips_nor_repeats_a_step(night_readers):
    # 2026-11-01 05:58 UTC is 01:58 EDT; at 06:00 UTC New York falls back to 01:00 EST.
    start = datetime(2026, 11, 1, 5, 58, tzinfo=UTC)
    stat_study(start)
    levels = []
    for minute in range(0, 31):
        levels += [level for level, _ in sweep(start + timedelta(minutes=minute))]
    assert levels == [1, 2, 3]
    steps = EscalationStep.objects.order_by("level")
    assert [s.due_at - start for s in steps] == [timedelta(minutes=m) for m in (5, 10, 15)]


def test_sla_thresholds_are_recorded_and_notified_once(night_readers):
    assignment = stat_study(NIGHT)
    assert sla_sweep(now=NIGHT + timedelta(minutes=3)) == []
    at_risk = sla_sweep(now=NIGHT + timedelta(minutes=4))  # 80 % of the 5-minute target
    assert [e.kind for e in at_risk] == ["ack_at_risk"]
    breached = sla_sweep(now=NIGHT + timedelta(minutes=6))
    assert [e.kind for e in breached] == ["ack_breached"]
    assert sla_sweep(now=NIGHT + timedelta(minutes=6)) == []
    for event in at_risk + breached:
        sla_notify(event=event)
    assert sorted(Notification.objects.filter(channel="in_app").values_list("event", "recipient__username")) == [
        ("sla_ack_at_risk", "first"),
        ("sla_ack_breached", "boss"),
        ("sla_ack_breached", "first"),
    ]
    assignment_acknowledge(assignment_id=assignment.pk, now=NIGHT + timedelta(minutes=7))
    later = sla_sweep(now=NIGHT + timedelta(minutes=61))
    assert sorted(e.kind for e in later) == ["report_at_risk", "report_breached"]
    assert SlaEvent.objects.count() == 4


def test_an_institution_override_sets_the_due_times(night_readers):
    from apps.reading.models import SlaPolicy

    SlaPolicy.objects.create(priority="STAT", institution="North", acknowledge_minutes=2, report_minutes=30)
    study = Study.objects.create(
        study_instance_uid="9.9",
        specialty="neuroradiology",
        priority="STAT",
        stage=Stage.ROUTED,
        received_at=NIGHT,
        institution_name="North",
    )
    assignment = study_assign(study_id=study.pk, now=NIGHT + timedelta(minutes=1))
    assert (assignment.acknowledge_due_at, assignment.report_due_at) == (
        NIGHT + timedelta(minutes=2),
        NIGHT + timedelta(minutes=30),
    )


def test_sla_compliance_by_priority_and_radiologist(night_readers, capsys, monkeypatch):
    from django.core.management import call_command

    from apps.reading.selectors import sla_compliance
    from apps.reading.services import assignment_complete

    on_time = stat_study(NIGHT, uid="7.1")
    late = stat_study(NIGHT, uid="7.2")
    assignment_acknowledge(assignment_id=on_time.pk, now=NIGHT + timedelta(minutes=2))
    assignment_complete(assignment_id=on_time.pk, now=NIGHT + timedelta(minutes=50))
    assignment_acknowledge(assignment_id=late.pk, now=NIGHT + timedelta(minutes=9))
    rows = sla_compliance(start=NIGHT - timedelta(days=1), end=NIGHT + timedelta(days=1), by="priority")
    assert rows == [
        {
            "priority": "STAT",
            "assignments": 2,
            "ack_met": 1,
            "report_met": 1,
            "ack_compliance": 0.5,
            "report_compliance": 0.5,
        }
    ]
    by_reader = sla_compliance(start=NIGHT - timedelta(days=1), end=NIGHT + timedelta(days=1), by="radiologist")
    assert [r["radiologist"] for r in by_reader] == ["First", "Second"]
    monkeypatch.setattr("apps.core.clock.now", lambda: NIGHT + timedelta(hours=1))
    call_command("slareport", "--days", "1", "--by", "institution")
    assert "50.0%" in capsys.readouterr().out


def test_admins_are_warned_once_of_a_privilege_about_to_expire(night_readers):
    from datetime import date

    from apps.pipeline.services import privileges_expiring_notify
    from apps.reading.models import Privilege

    User.objects.create(username="admin", email="admin@example.org", is_staff=True)
    first = Radiologist.objects.get(display_name="First")
    Privilege.objects.create(radiologist=first, institution="North", expires_on=date.today() + timedelta(days=3))
    assert len(privileges_expiring_notify()) == 2  # in-app and email to the one staff user
    assert privileges_expiring_notify() == []


def test_an_escalation_window_of_two_minutes_set_in_the_document_paces_the_steps(night_readers):
    from apps.configuration.services import config_import

    config_import("escalation:\n  - {priority: STAT, window_minutes: 2, steps: [remind, reassign, supervisors]}\n")
    stat_study(NIGHT)
    assert sweep(NIGHT + timedelta(minutes=5)) == [(1, "First")]  # the acknowledge target, as before
    assert sweep(NIGHT + timedelta(minutes=6, seconds=59)) == []
    assert sweep(NIGHT + timedelta(minutes=7)) == [(2, "Second")]
    assert sweep(NIGHT + timedelta(minutes=9)) == [(3, "Second")]
    steps = EscalationStep.objects.order_by("level")
    assert [(s.action, s.due_at - NIGHT) for s in steps] == [
        ("remind", timedelta(minutes=5)),
        ("reassign", timedelta(minutes=7)),
        ("supervisors", timedelta(minutes=9)),
    ]


def test_a_ladder_of_other_steps_and_priorities_is_followed(night_readers):
    from apps.configuration.services import config_import

    config_import(
        "escalation:\n"
        "  - {priority: STAT, window_minutes: 5, steps: [supervisors]}\n"
        "  - {priority: URGENT, window_minutes: 10, steps: [remind, supervisors]}\n"
    )
    stat_study(NIGHT)
    urgent = Study.objects.create(
        study_instance_uid="1.2.4", specialty="neuroradiology", priority="URGENT", stage=Stage.ROUTED, received_at=NIGHT
    )
    study_assign(study_id=urgent.pk, now=NIGHT)  # acknowledge within 30 minutes
    assert sweep(NIGHT + timedelta(minutes=5)) == [(1, "First")]
    assert sweep(NIGHT + timedelta(minutes=30)) == [(1, "Second")]
    assert sweep(NIGHT + timedelta(minutes=40)) == [(2, "Second")]
    events = sorted(Notification.objects.filter(channel="in_app").values_list("event", "recipient__username"))
    assert events == [("stat_escalated", "boss"), ("urgent_escalated", "boss"), ("urgent_reminder", "second")]
