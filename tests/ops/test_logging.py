"""Logs as JSON on request (LOG_FORMAT=json), from the SCP and every worker, and no patient data in them."""

import json
import re

import pytest

from apps.configuration.services import config_import
from apps.studies.models import Stage, Study

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import storescu, synthetic_study
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PLAIN_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) ")


def test_json_logs_from_the_scp_and_the_workers_carry_no_patient_data(
    start_scp, start_worker, service_env, log_dir, tmp_path
):
    config_import(ACHEN_ON_SHIFT)
    env = {**service_env, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    _, port = start_scp(env=env)
    start_worker(env=env)
    uid, paths = synthetic_study(tmp_path / "modality", count=2, patient_name="Secret^Patient", body_part="HEAD")
    assert storescu(port, paths).returncode == 0
    wait_until(
        lambda: Study.objects.filter(study_instance_uid=uid, stage=Stage.NOTIFIED).exists(),
        timeout=60,
        what="the study to be assigned and notified",
    )

    records, loggers = 0, set()
    for path in log_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            assert "Secret" not in line and "Patient^" not in line, f"{path.name}: {line}"
            if path.name.startswith(("scp", "worker")):
                assert not PLAIN_RECORD.match(line), f"{path.name}: a plain-text record in JSON mode: {line}"
                if line.startswith("{"):
                    record = json.loads(line)
                    assert {"time", "level", "logger", "message"} <= set(record)
                    records += 1
                    loggers.add(record["logger"].split(".")[0])
    assert records >= 5
    assert {"apps", "celery"} <= loggers
