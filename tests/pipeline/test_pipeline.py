"""The chain's orchestration without Celery: notify once, reconcile what is stuck, report status."""

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.pipeline.selectors import study_status
from apps.pipeline.services import reconcile_targets, study_notify
from apps.studies.models import Stage, Study

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import synthetic_study
from ..support.peers import StatusSCP
from ..support.pipeline import receive, receive_study, run_steps

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = (
    """
destinations:
  - {name: neuro-pacs, ae_title: PEER, host: 127.0.0.1, port: %d}
rules:
  - {name: CT head, priority: 200, match: {modality: CT, body_part: HEAD}, destinations: [neuro-pacs]}
"""
    + ACHEN_ON_SHIFT
)


@pytest.fixture
def email_locmem(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def test_the_assigned_reader_is_notified_once_in_app_and_by_email(storage, tmp_path, default_mapping, email_locmem):
    from apps.notifications.services import notification_send

    config_import(CONFIG % 1)
    _, paths = synthetic_study(tmp_path / "in", count=2, patient_name="Secret^Patient")
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="assign")
    ids = study_notify(study_id=study_id)
    assert len(ids) == 2
    for notification_id in ids:
        assert notification_send(notification_id=notification_id) == "sent"
    assert study_notify(study_id=study_id) == []  # stage moved on
    Study.objects.filter(pk=study_id).update(stage=Stage.ASSIGNED)
    study_notify(study_id=study_id)  # a re-run creates nothing new
    assert Notification.objects.count() == 2
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["achen@example.org"]
    assert "Secret" not in message.subject + message.body
    assert "Accession" in message.body


def test_the_reconciler_finds_received_instances_nobody_processed(storage, tmp_path):
    _, paths = synthetic_study(tmp_path / "in", count=2)
    uid = receive(storage, paths[0])
    assert reconcile_targets(older_than=60) == []
    later = timezone.now() + timedelta(seconds=61)
    targets = reconcile_targets(now=later, older_than=60)
    study = Study.objects.get(study_instance_uid=uid)
    assert targets == [(study.pk, "persist")]


def test_the_reconciler_restarts_a_stuck_study_at_its_next_step_and_leases_it(storage, tmp_path):
    _, paths = synthetic_study(tmp_path / "in", count=1)
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="persist")
    later = timezone.now() + timedelta(seconds=61)
    assert reconcile_targets(now=later, older_than=60) == [(study_id, "classify")]
    assert reconcile_targets(now=later + timedelta(seconds=1), older_than=60) == []


def test_waiting_and_finished_studies_are_left_alone(storage, tmp_path):
    Study.objects.create(study_instance_uid="1.1", stage=Stage.HELD)
    Study.objects.create(study_instance_uid="1.2", stage=Stage.NOTIFIED)
    Study.objects.create(study_instance_uid="1.3", stage=Stage.UNASSIGNED)
    assert reconcile_targets(now=timezone.now() + timedelta(hours=1), older_than=60) == []


def test_studystatus_reports_every_part(storage, tmp_path, default_mapping, email_locmem, capsys):
    from apps.routing.services import delivery_send

    with StatusSCP() as peer:
        config_import(CONFIG % peer.port)
        uid, paths = synthetic_study(tmp_path / "in", count=2)
        study_id = receive_study(storage, paths)
        due = run_steps(study_id)
        delivery_send(delivery_id=due[0])
    status = study_status(study_instance_uid=uid)
    assert status["received"] == {"total": 2, "received": 0, "persisted": 2, "quarantined": 0}
    assert status["stage"] == "notified"
    assert status["deliveries"][0]["state"] == "delivered"
    assert status["assignment"]["username"] == "achen"
    assert {n["channel"] for n in status["notifications"]} == {"in_app", "email"}
    call_command("studystatus", uid, "--json")
    assert json.loads(capsys.readouterr().out)["routing"]["destinations"] == ["neuro-pacs"]
    call_command("studystatus", uid)
    text = capsys.readouterr().out
    assert "Delivery    neuro-pacs: delivered 2/2" in text
    assert "Assignment  A. Chen (achen): assigned" in text
