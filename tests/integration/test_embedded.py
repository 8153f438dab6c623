"""The embedded default (`make run`): SQLite and the server-less routerfs:// broker, no servers at all.
The rest of the suite runs on PostgreSQL and Redis; this test runs the same processes on the default."""

import json
import os
import subprocess

import pytest
from kombu import Connection

from ..support import procfile
from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import storescu, synthetic_study
from ..support.processes import Process, free_port, python_manage, wait_until

pytestmark = pytest.mark.integration

CONFIG = (
    """
destinations:
  - {name: neuro-pacs, ae_title: NEURO_PACS, host: 127.0.0.1, port: %d}
rules:
  - {name: CT head to neuro, priority: 200, match: {modality: CT, body_part: HEAD}, destinations: [neuro-pacs]}
"""
    + ACHEN_ON_SHIFT
)


@pytest.fixture
def embedded_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "STORAGE_ROOT")}
    env.update(
        {
            "ROUTER_VAR_DIR": str(tmp_path / "var"),
            "TCP_NODELAY": "1",
            "PYTHONUNBUFFERED": "1",
            "STORAGE_MIN_FREE_BYTES": "1048576",
        }
    )
    return env


def manage(env, *args):
    result = subprocess.run(python_manage(*args), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_study_is_routed_and_assigned_on_the_embedded_default(embedded_env, storescp, tmp_path, log_dir):
    _, pacs_port, pacs_folder = storescp("NEURO_PACS")
    manage(embedded_env, "migrate", "--noinput")
    (tmp_path / "config.yaml").write_text(CONFIG % pacs_port)
    manage(embedded_env, "importconfig", str(tmp_path / "config.yaml"))
    port = free_port()
    processes = [
        Process(
            "scp",
            procfile.command("scp", "--host", "127.0.0.1", "--port", str(port)),
            env=embedded_env,
            log_dir=log_dir,
        ),
        *(
            Process(role, procfile.command(role), env=embedded_env, log_dir=log_dir)
            for role in ("worker", "worker-deliver", "worker-stat")
        ),
    ]
    try:
        processes[0].wait_for_port(port)
        for worker in processes[1:]:
            worker.wait_for_log("ready.", timeout=60)
        uid, paths = synthetic_study(tmp_path / "modality", count=3, body_part="HEAD")
        assert storescu(port, paths).returncode == 0

        def status():
            report = json.loads(manage(embedded_env, "studystatus", uid, "--json"))
            return report if report["stage"] == "notified" and report["deliveries"][0]["state"] == "delivered" else None

        report = wait_until(status, timeout=60, interval=0.5, what="the study to be delivered and notified")
        assert report["assignment"]["username"] == "achen"
        assert len(list(pacs_folder.iterdir())) == 3
        assert processes[1].alive()
    finally:
        for proc in processes:
            proc.stop(timeout=30)


def drain_while_producing(url: str, folder, count: int = 300) -> list[int]:
    """One thread publishes `count` large messages while the main thread consumes them."""
    import threading

    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder)}
    padding = "x" * 200_000  # a large message widens the window between creating and filling its file
    received: list[int] = []

    def produce() -> None:
        with Connection(url, transport_options=options) as conn:
            queue = conn.SimpleQueue("work")
            for n in range(count):
                queue.put({"n": n, "padding": padding})
            queue.close()

    producer = threading.Thread(target=produce)
    with Connection(url, transport_options=options) as conn:
        queue = conn.SimpleQueue("work")
        producer.start()
        while len(received) < count:
            message = queue.get(timeout=30)
            received.append(message.payload["n"])
            message.ack()
        queue.close()
    producer.join()
    return received


def slow_lock(monkeypatch) -> None:
    """Widen the window between creating a message file and filling it, as a loaded machine does.
    (kombu's own filesystem transport then hands the empty file to the consumer, which dies on it.)"""
    import time

    from kombu.transport import filesystem

    original = filesystem.lock

    def lock(*args):
        time.sleep(0.02)
        return original(*args)

    monkeypatch.setattr(filesystem, "lock", lock)


def test_the_embedded_broker_never_hands_out_a_message_that_is_still_being_written(tmp_path, monkeypatch):
    slow_lock(monkeypatch)
    assert sorted(drain_while_producing("routerfs://", tmp_path, count=100)) == list(range(100))
