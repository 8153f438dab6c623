"""A study travels from a modality to a destination PACS and a radiologist, on real services:
runscp, a Celery worker on Redis, PostgreSQL, dcmtk's storescu as the modality and storescp as the PACS."""

import json
import subprocess

import pytest

from apps.configuration.services import config_import
from apps.notifications.models import Notification
from apps.pipeline.selectors import study_status
from apps.reading.models import Assignment
from apps.routing.models import DeliveryItem
from apps.studies.models import Instance

from ..support.dicom import dataset_bytes, storescu, synthetic_study
from ..support.processes import python_manage, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: neuro-pacs, ae_title: NEURO_PACS, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1}
  - {name: body-pacs, ae_title: BODY_PACS, host: 127.0.0.1, port: %(other)d}
rules:
  - {name: CT head to neuro, priority: 200, match: {modality: CT, body_part: HEAD}, destinations: [neuro-pacs]}
  - {name: Abdomen to body, priority: 100, match: {body_part: ABDOMEN}, destinations: [body-pacs]}
radiologists:
  - username: achen
    name: A. Chen
    email: achen@example.org
    specialty: neuroradiology
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
  - username: bbody
    name: B. Body
    email: bbody@example.org
    specialty: body_imaging
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
"""


def settled(uid: str) -> dict | None:
    status = study_status(study_instance_uid=uid)
    if status and status["stage"] == "notified" and all(d["state"] == "delivered" for d in status["deliveries"]):
        return status
    return None


def test_a_ct_head_study_is_routed_to_neuro_and_assigned_to_the_neuroradiologist(
    start_scp, start_worker, storescp, service_env, tmp_path
):
    _, pacs_port, pacs_folder = storescp("NEURO_PACS")
    config_import(CONFIG % {"port": pacs_port, "other": 1})
    _, port = start_scp()
    start_worker()
    uid, paths = synthetic_study(tmp_path / "modality", count=5, body_part="HEAD", patient_name="Secret^Patient")

    result = storescu(port, paths)
    assert result.returncode == 0, result.stderr

    status = wait_until(lambda: settled(uid), timeout=30, what="the study to be delivered and notified")
    delivered = sorted(pacs_folder.iterdir())
    assert len(delivered) == 5
    sent = {dataset_bytes(p) for p in paths}
    assert {dataset_bytes(p) for p in delivered} == sent  # byte-identical at the destination
    assert status["routing"]["matched_rules"] == ["CT head to neuro"]
    assert status["deliveries"] == [
        {
            "destination": "neuro-pacs",
            "state": "delivered",
            "attempts": 1,
            "instances": 5,
            "delivered": 5,
            "last_error": "",
            "delivered_at": status["deliveries"][0]["delivered_at"],
        }
    ]
    assert status["specialty"] == "neuroradiology"
    assert status["assignment"]["username"] == "achen"
    assert Assignment.objects.count() == 1
    notifications = Notification.objects.filter(recipient__username="achen")
    assert sorted(notifications.values_list("channel", "state")) == [("email", "sent"), ("in_app", "sent")]
    mails = list((tmp_path / "mail").iterdir())
    assert len(mails) == 1
    assert "Secret" not in mails[0].read_text()

    report = subprocess.run(
        python_manage("studystatus", uid, "--json"), env=service_env, capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0, report.stderr
    printed = json.loads(report.stdout)
    assert printed["stage"] == "notified"
    assert printed["assignment"]["radiologist"] == "A. Chen"
    assert printed["received"]["persisted"] == 5
    assert Instance.objects.count() == 5
    assert DeliveryItem.objects.filter(state="delivered").count() == 5
