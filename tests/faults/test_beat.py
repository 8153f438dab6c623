"""Two Beat processes at once, each sending every sweep: a STAT study nobody acknowledges is reminded,
reassigned and escalated to the supervisors once each, and nobody is assigned or notified twice."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.reading.defaults import DEFAULT_SLA_POLICIES
from apps.reading.models import Assignment, EscalationStep, SlaEvent, SlaPolicy
from apps.studies.models import Stage, Study

from ..support.dicom import storescu, synthetic_study
from ..support.processes import Process, wait_until
from .conftest import (
    assert_each_once,
    assert_emails_sent_once,
    assert_ledger_delivered_once,
    assert_nothing_twice,
    storescp_copies,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
radiologists:
  - username: achen
    email: achen@example.org
    specialty: neuroradiology
    seniority: 12
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
  - username: bdoe
    email: bdoe@example.org
    specialty: neuroradiology
    seniority: 2
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
"""


def sweeps_sent(beat: Process, entry: str = "escalations-due") -> int:
    return beat.log().count(f"Sending due task {entry} ")


def sweeps_run(workers: list[Process], task: str = "escalations_due") -> int:
    done = re.compile(rf"Task pipeline\.{task}\[[^]]+\] succeeded")
    return sum(len(done.findall(w.log())) for w in workers)


def test_two_beats_at_once_take_each_escalation_step_once_and_notify_once(
    start_scp, start_worker, start_beat, storescp, tmp_path, escalation_ladder
):
    pacs, pacs_port, pacs_folder = storescp("PACS")
    config_import(CONFIG % {"port": pacs_port})
    for row in DEFAULT_SLA_POLICIES:
        SlaPolicy.objects.get_or_create(priority=row["priority"], institution=row["institution"], defaults=row)
    boss = User.objects.create(username="boss", email="boss@example.org")
    boss.groups.add(Group.objects.get_or_create(name="supervisors")[0])
    _, port = start_scp()
    workers = start_worker()
    beats = [start_beat(), start_beat()]  # two schedulers, each with its own schedule file: every sweep twice

    uid, paths = synthetic_study(tmp_path / "modality", count=2, body_part="HEAD", priority="STAT")
    assert storescu(port, paths).returncode == 0
    study = wait_until(
        lambda: Study.objects.filter(study_instance_uid=uid, stage=Stage.NOTIFIED).first(),
        timeout=30,
        interval=0.2,
        what="the STAT study assigned and its reader notified",
    )
    first = Assignment.objects.get(study=study)
    assert study.priority == "STAT" and first.acknowledge_due_at is not None
    # The clock, injected: the acknowledge target passed 11 minutes ago, so the remind (at the target),
    # reassign (5 minutes later) and supervisors (10 minutes later) steps are all due at the next sweep.
    Assignment.objects.filter(pk=first.pk).update(acknowledge_due_at=timezone.now() - timedelta(minutes=11))

    wait_until(
        lambda: EscalationStep.objects.count() == 3,
        timeout=40,
        interval=0.2,
        what="the three escalation steps (escalations-due runs every 15 s)",
    )
    # Both Beats sweep again (each at least twice in all, and once more after the steps were taken), and
    # those sweeps run: they must find nothing left to do.
    sent = [sweeps_sent(beat) for beat in beats]
    wait_until(
        lambda: all(sweeps_sent(beat) >= max(n + 1, 2) for beat, n in zip(beats, sent, strict=True)),
        timeout=40,
        interval=0.5,
        what="more escalations-due sweeps from each Beat",
    )
    # And both Beats' first SLA check (every 30 s): the acknowledge target is long past.
    wait_until(
        lambda: all(sweeps_sent(beat, "sla-check") >= 1 for beat in beats),
        timeout=40,
        interval=0.5,
        what="an sla-check sweep from each Beat",
    )
    wait_until(
        lambda: (
            sweeps_run(workers) >= sum(sweeps_sent(beat) for beat in beats)
            and sweeps_run(workers, "sla_check") >= sum(sweeps_sent(beat, "sla-check") for beat in beats)
        ),
        timeout=20,
        interval=0.2,
        what="every sweep sent to have run",
    )
    wait_until(
        lambda: not Notification.objects.exclude(state=Notification.State.SENT).exists(),
        timeout=20,
        interval=0.2,
        what="every notification sent",
    )

    assert all(sweeps_sent(beat) >= 2 for beat in beats)
    assert list(EscalationStep.objects.order_by("level").values_list("level", flat=True)) == [1, 2, 3]
    assignments = Assignment.objects.filter(study=study).order_by("assigned_at")
    assert [(a.radiologist.user.username, a.status) for a in assignments] == [
        ("achen", "cancelled"),  # the first reader never acknowledged
        ("bdoe", "assigned"),  # the next eligible reader, once
    ]
    told = sorted(
        Notification.objects.filter(event__in=["study_assigned", "stat_reminder", "stat_reassigned", "stat_escalated"])
        .values_list("event", "recipient__username", "channel")
        .distinct()
    )
    assert told == [
        ("stat_escalated", "boss", "email"),
        ("stat_escalated", "boss", "in_app"),
        ("stat_reassigned", "bdoe", "email"),
        ("stat_reassigned", "bdoe", "in_app"),
        ("stat_reminder", "achen", "email"),
        ("stat_reminder", "achen", "in_app"),
        ("study_assigned", "achen", "email"),
        ("study_assigned", "achen", "in_app"),
    ]
    assert Notification.objects.filter(event__in=[t[0] for t in told]).count() == len(told)  # each once
    # The SLA thresholds of the open assignment, recorded once each; the reader is told of both, the
    # supervisors of the breach.
    events = SlaEvent.objects.filter(assignment__status="assigned").order_by("kind")
    assert [e.kind for e in events] == ["ack_at_risk", "ack_breached"]
    for event in events:
        sla_told = Notification.objects.filter(subject_key=f"sla:{event.pk}")
        readers = ["bdoe", "boss"] if event.kind == "ack_breached" else ["bdoe"]
        assert sorted(sla_told.values_list("recipient__username", flat=True)) == sorted(readers * 2)
    assert_nothing_twice()
    assert_emails_sent_once(tmp_path / "mail")
    assert_each_once(storescp_copies(pacs, pacs_folder), {p.stem for p in paths})
    assert_ledger_delivered_once(instances=2, deliveries=1)
