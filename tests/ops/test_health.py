"""/healthz on real processes: heartbeats from an SCP and a worker, a stopped broker, the storage watermark."""

import pytest
from django.test import Client

from apps.ops.models import Heartbeat
from apps.studies.models import ReceivedInstance

from ..support.dicom import storescu, synthetic_study
from ..support.processes import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_healthz_is_ok_with_a_live_scp_and_worker_and_reports_a_stopped_broker(start_scp, start_worker, settings):
    start_scp()
    start_worker()
    wait_until(
        lambda: {"scp", "worker"} <= set(Heartbeat.objects.values_list("role", flat=True)),
        timeout=30,
        what="heartbeats from the SCP and the worker",
    )
    settings.STORAGE_MIN_FREE_BYTES = 1024
    response = Client().get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json()["broker"] == "ok"
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    down = Client().get("/healthz")
    assert down.status_code == 503
    assert down.json()["broker"].startswith("unreachable")


def test_healthz_without_processes_is_unhealthy(settings, storage):
    settings.STORAGE_MIN_FREE_BYTES = 1024
    report = Client().get("/healthz")
    assert report.status_code == 503 and report.json()["processes"] == []


def test_healthz_with_missing_storage_says_so(settings, tmp_path):
    settings.STORAGE_ROOT = tmp_path / "not-there"
    report = Client().get("/healthz")
    assert report.status_code == 503 and report.json()["storage"]["status"] == "unavailable"


def test_below_the_free_space_watermark_the_scp_answers_a700_and_stores_nothing(
    start_scp, service_env, tmp_path, storage
):
    _, port = start_scp({**service_env, "STORAGE_MIN_FREE_BYTES": str(10**18)})
    _, paths = synthetic_study(tmp_path / "in", count=1)
    result = storescu(port, paths)
    assert result.returncode != 0 or "0xa700" in (result.stdout + result.stderr).lower()
    assert ReceivedInstance.objects.count() == 0
    assert not list((storage / "instances").rglob("*.dcm")) if (storage / "instances").exists() else True


def test_metrics_count_a_routed_and_delivered_study(storage, tmp_path, default_mapping):
    from apps.configuration.services import config_import
    from apps.routing.services import delivery_send

    from ..support.config import ACHEN_ON_SHIFT
    from ..support.peers import StatusSCP
    from ..support.pipeline import receive_study, run_steps

    with StatusSCP() as peer:
        config_import(
            f"""
destinations: [{{name: pacs, ae_title: PEER, host: 127.0.0.1, port: {peer.port}}}]
rules: [{{name: all CT, priority: 1, match: {{modality: CT}}, destinations: [pacs]}}]
"""
            + ACHEN_ON_SHIFT
        )
        _, paths = synthetic_study(tmp_path / "in", count=3)
        [delivery_id] = run_steps(receive_study(storage, paths))
        delivery_send(delivery_id=delivery_id)
    text = Client().get("/metrics").content.decode()
    assert 'router_instances_received_total{state="persisted"} 3.0' in text
    assert 'router_deliveries{destination="pacs",state="delivered"} 1.0' in text
    assert "router_receipt_to_assignment_seconds_avg" in text
    assert 'router_queue_depth{queue="stat"}' in text
