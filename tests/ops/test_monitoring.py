"""The operator's view: Prometheus's configuration and alerts checked and unit-tested by promtool, a real
Prometheus scraping a running web process, and a Grafana dashboard that asks only for metrics /metrics serves."""

import json
import re
import subprocess
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.test import Client

from apps.core import clock
from apps.ops.services import heartbeat
from apps.reading.models import Assignment, SlaEvent
from apps.routing.models import Delivery, Destination

from ..support.dicom import synthetic_study
from ..support.processes import BIN, Process, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
PROMTOOL = "/usr/bin/promtool"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_configuration_and_its_rules():
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 14 rules found" in rules.stdout


def test_promtool_unit_tests_pass_and_see_every_alert_fire_and_stay_quiet():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    fired, quiet = set(), set()
    for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fired == alerts
    assert quiet == alerts


@pytest.fixture
def delivered_study(storage, tmp_path, default_mapping, settings):
    """A CT study received, routed, assigned to a radiologist on shift and delivered to a real peer."""
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
    return Delivery.objects.get(pk=delivery_id)


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def test_metrics_serve_heartbeats_destinations_sla_storage_and_windowed_histograms(delivered_study):
    now = clock.now()
    heartbeat(role="scp", name="node-a:11112", now=now - timedelta(seconds=200))
    heartbeat(role="beat", name="schedule", now=now)
    assignment = Assignment.objects.get(study=delivered_study.study)
    delivered_study.study.priority = "STAT"
    delivered_study.study.save(update_fields=["priority"])
    Assignment.objects.filter(pk=assignment.pk).update(acknowledge_due_at=now - timedelta(minutes=1))
    Destination.objects.filter(name="pacs").update(config_error="the transform cannot be applied")

    samples = _samples(Client().get("/metrics").content.decode())

    age = samples['router_heartbeat_age_seconds{name="node-a:11112",role="scp"}']
    assert 199 <= age < 260
    assert samples['router_heartbeat_age_seconds{name="schedule",role="beat"}'] < 30
    assert 0 <= samples["router_last_instance_received_age_seconds"] < 300
    assert samples['router_destination_paused{destination="pacs"}'] == 1.0
    assert samples['router_destination_down{destination="pacs"}'] == 0.0
    assert samples['router_delivery_failures_total{destination="pacs"}'] == 0.0
    assert samples['router_assignments_ack_overdue{priority="STAT"}'] == 1.0
    assert samples['router_assignments_ack_overdue{priority="ROUTINE"}'] == 0.0
    assert samples["router_storage_free_bytes"] > 0
    assert samples["router_storage_emergency_threshold_bytes"] == 4 * samples["router_storage_min_free_bytes"]
    # One assignment and one delivery in the window, each in the buckets its duration falls in.
    assert samples["router_receipt_to_assignment_seconds_count"] == 1.0
    assert samples['router_receipt_to_assignment_seconds_bucket{le="+Inf"}'] == 1.0
    assert samples['router_receipt_to_delivered_seconds_count{destination="pacs"}'] == 1.0
    send = delivered_study.last_attempt_seconds
    assert send is not None and 0 < send < 60
    assert samples['router_delivery_send_seconds_sum{destination="pacs"}'] == pytest.approx(send)
    assert samples['router_delivery_send_seconds_bucket{destination="pacs",le="60.0"}'] == 1.0
    assert samples['router_delivery_send_seconds_bucket{destination="pacs",le="0.1"}'] == float(send <= 0.1)
    assert samples["router_stat_acknowledgement_seconds_count"] == 0.0


def test_histograms_count_only_rows_of_their_window(delivered_study):
    Delivery.objects.filter(pk=delivered_study.pk).update(
        delivered_at=clock.now() - timedelta(hours=2), last_attempt_at=clock.now() - timedelta(hours=2)
    )
    Assignment.objects.filter(study=delivered_study.study).update(
        status=Assignment.Status.ACKNOWLEDGED,
        assigned_at=clock.now() - timedelta(hours=2),
        acknowledged_at=clock.now() - timedelta(hours=2) + timedelta(seconds=100),
    )
    delivered_study.study.priority = "STAT"
    delivered_study.study.save(update_fields=["priority"])

    samples = _samples(Client().get("/metrics").content.decode())

    assert samples["router_receipt_to_assignment_seconds_count"] == 0.0
    assert 'router_receipt_to_delivered_seconds_count{destination="pacs"}' not in samples
    assert 'router_delivery_send_seconds_count{destination="pacs"}' not in samples
    # STAT acknowledgements keep a day: 100 s falls in the 120 s bucket, not the 60 s one.
    assert samples['router_stat_acknowledgement_seconds_bucket{le="120.0"}'] == 1.0
    assert samples['router_stat_acknowledgement_seconds_bucket{le="60.0"}'] == 0.0
    assert samples["router_stat_acknowledgement_seconds_sum"] == pytest.approx(100.0, abs=0.01)


def _dashboard_metric_names() -> set[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "router.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all(e.strip() for e in exprs)
    names: set[str] = set()
    for expr in exprs:
        # Metric names are the identifiers PromQL does not reserve: strip strings, label matchers, ranges.
        bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
        names |= {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if n.startswith(("router_", "flower_"))}
    return names


def test_the_dashboard_is_provisioned_json_and_asks_only_for_metrics_the_router_serves(delivered_study):
    heartbeat(role="scp", name="node-a:11112")
    now = clock.now()
    Assignment.objects.filter(study=delivered_study.study).update(
        status=Assignment.Status.COMPLETED,
        acknowledged_at=now,
        completed_at=now,
        acknowledge_due_at=now + timedelta(minutes=5),
        report_due_at=now - timedelta(minutes=5),
    )
    SlaEvent.objects.create(
        assignment=Assignment.objects.get(study=delivered_study.study),
        kind=SlaEvent.Kind.REPORT_BREACHED,
        due_at=now - timedelta(minutes=5),
    )
    served = {
        re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        for line in Client().get("/metrics").content.decode().splitlines()
        if line and not line.startswith("#")
    }
    asked = _dashboard_metric_names()
    assert {n for n in asked if n.startswith("router_")} <= served, sorted(asked - served)
    assert len(asked) >= 10
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "router.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
            return response.status == 200
    except OSError:  # 503 while its storage opens
        return False


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_a_real_prometheus_scrapes_the_running_router_and_evaluates_its_rules(service_env, log_dir, tmp_path):
    heartbeat(role="scp", name="node-a:11112")
    heartbeat(role="beat", name="schedule", now=clock.now() - timedelta(minutes=10))
    web_port, prom_port = free_port(), free_port()
    started = []
    try:
        web = Process(
            "web",
            [
                str(BIN / "gunicorn"),
                "routerproject.wsgi:application",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "1",
            ],
            env=service_env,
            log_dir=log_dir,
        )
        started.append(web)
        web.wait_for_port(web_port)
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
        [router_job] = [j for j in config["scrape_configs"] if j["job_name"] == "router"]
        router_job.update(
            scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [f"127.0.0.1:{web_port}"]}]
        )
        config["scrape_configs"] = [router_job]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = Process(
            "prometheus",
            [
                "/usr/bin/prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            env=service_env,
            log_dir=log_dir,
        )
        started.append(prometheus)
        prometheus.wait_for_port(prom_port)
        wait_until(lambda: _ready(prom_port), timeout=30, what="Prometheus ready")

        scraped = wait_until(
            lambda: _query(prom_port, 'router_heartbeat_age_seconds{role="scp"}'), timeout=30, what="a scrape"
        )
        assert scraped[0]["metric"] == {
            "__name__": "router_heartbeat_age_seconds",
            "role": "scp",
            "name": "node-a:11112",
            "instance": "router",
            "job": "router",
        }
        assert _query(prom_port, 'up{job="router"}')[0]["value"][1] == "1"
        assert _query(prom_port, "router_storage_min_free_bytes")[0]["value"][1] == "1048576"
        # Beat's heartbeat is 10 minutes old: the rule is pending (it fires after its `for`).
        pending = wait_until(
            lambda: [a for a in _query(prom_port, "ALERTS") if a["metric"]["alertname"] == "RouterBeatNotTicking"],
            timeout=30,
            what="the Beat alert",
        )
        assert pending[0]["metric"]["alertstate"] == "pending"
    finally:
        for proc in reversed(started):
            proc.stop()


def test_compose_s_monitoring_profile_mounts_these_files_on_localhost_ports():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in compose["volumes"]
    assert "web" in services["web"]["environment"]["ALLOWED_HOSTS"].split(",")  # the scrape's Host header
    [job] = [
        j
        for j in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
        if j["job_name"] == "router"
    ]
    assert job["static_configs"] == [{"targets": ["web:8000"]}]
