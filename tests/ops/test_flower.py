"""Flower, started with the Procfile's command: no answer without a login, and the chain's tasks shown by
name with study ids as their only arguments (no patient data)."""

import ast
import base64
import json
import re
import urllib.error
import urllib.request

import pytest

from apps.pipeline.chains import chain_start

from ..support import procfile
from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study
from ..support.processes import Process, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LOGIN = "ops:flower-secret"


def get(url: str, login: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_procfile_will_not_start_flower_without_a_login():
    with pytest.raises(KeyError, match="FLOWER_BASIC_AUTH"):
        procfile.command("flower", env={})


def test_flower_refuses_anonymous_requests_and_shows_tasks_by_name_with_ids_only(
    service_env, log_dir, storage, start_worker, tmp_path
):
    port = free_port()
    env = {**service_env, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": LOGIN}
    flower = Process("flower", procfile.command("flower", "--address=127.0.0.1", env=env), env=env, log_dir=log_dir)
    try:
        flower.wait_for_port(port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/tasks", "/api/tasks", "/api/workers"):
            assert get(base + path)[0] == 401, path
        assert get(base + "/api/tasks", "ops:wrong")[0] == 401

        start_worker()
        _, paths = synthetic_study(tmp_path / "modality", count=2, patient_name="Secret^Patient")
        study_id = receive_study(storage, paths)
        assert chain_start(study_id)

        def tasks_seen():
            status, body = get(base + "/api/tasks", LOGIN)
            tasks = json.loads(body) if status == 200 else {}
            names = {t["name"] for t in tasks.values()}
            return tasks if {"pipeline.persist", "pipeline.notify"} <= names else None

        tasks = wait_until(tasks_seen, timeout=60, interval=0.5, what="Flower to show the chain's tasks")
        chain = [t for t in tasks.values() if t["name"] in {f"pipeline.{s}" for s in ("persist", "classify", "notify")}]
        assert {tuple(ast.literal_eval(t["args"])) for t in chain} == {(study_id,)}
        text = json.dumps(tasks)
        assert "Secret" not in text and "Patient" not in text
        assert not re.search(r"\d+\.\d+\.\d+\.\d+\.\d+", text)  # no UIDs either

        # What Prometheus scrapes (deploy/prometheus/prometheus.yml, job flower): /metrics, which Flower serves
        # without its login: the metrics docs/operations.md names, task events by name, no PHI and no UIDs.
        status, body = get(base + "/metrics")
        metrics = body.decode()
        assert status == 200
        assert re.search(r'flower_events_total\{[^}]*task="pipeline\.persist"[^}]*type="task-succeeded"', metrics)
        served = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if not line.startswith("#")}
        documented = {"flower_events_total", "flower_task_runtime_seconds_count", "flower_worker_online"}
        assert documented <= served, sorted(documented - served)
        assert "Secret" not in metrics and not re.search(r"\d+\.\d+\.\d+\.\d+\.\d+", metrics)
    finally:
        flower.stop()
