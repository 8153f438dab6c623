"""Fixtures. The suite runs against real PostgreSQL and Redis (`make test` provides and starts them);
integration tests start their own SCP, Celery worker, Beat and DICOM peers on free ports."""

import os
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.db import connection

from apps.reading.defaults import install_escalation_defaults
from apps.studies.defaults import install_defaults

from .support import procfile
from .support.processes import Process, celery, dcmtk, free_port, stop_all

QUEUES = "ingest,workflow,deliver,notify,stat"
WORKER_ROLES = ("worker", "worker-deliver", "worker-stat")


def pytest_configure(config) -> None:
    engine = django_settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise pytest.UsageError(
            "The suite runs against PostgreSQL and Redis: use `make test`, or set DATABASE_URL=postgres://... "
            "and CELERY_BROKER_URL=redis://..."
        )
    if not django_settings.CELERY_BROKER_URL.startswith("redis://"):
        raise pytest.UsageError("CELERY_BROKER_URL must point to Redis for the integration tests (see `make test`).")
    _broker_per_xdist_worker()


def _broker_per_xdist_worker() -> None:
    """Under pytest-xdist each worker gets its own Redis database (pytest-django already gives it its own
    PostgreSQL database), so one worker's Celery processes never take another's messages."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return
    base, _, db = django_settings.CELERY_BROKER_URL.rpartition("/")
    index = int(db or 0) + int(worker[2:])
    if index > 15:
        raise pytest.UsageError(f"too many xdist workers for Redis databases above {db}: {worker}")
    django_settings.CELERY_BROKER_URL = f"{base}/{index}"
    os.environ["CELERY_BROKER_URL"] = django_settings.CELERY_BROKER_URL  # Celery's broker_url reads it first


def require_tool(name: str) -> str:
    try:
        return dcmtk(name)
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def default_mapping(db) -> None:
    """The shipped classification and QC tables (transactional tests flush what the migration installed)."""
    install_defaults(apps.get_model)


@pytest.fixture
def escalation_ladder(db) -> None:
    """The shipped escalation ladder (STAT: remind, reassign, supervisors, 5 minutes apart)."""
    install_escalation_defaults(apps.get_model)


@pytest.fixture
def storage(tmp_path, settings) -> Path:
    settings.STORAGE_ROOT = tmp_path / "storage"
    settings.STORAGE_ROOT.mkdir()
    return settings.STORAGE_ROOT


@pytest.fixture
def service_env(transactional_db, default_mapping, tmp_path, storage, settings) -> dict:
    """Environment for child processes: the test database, this test's storage, short sweeper periods."""
    db = connection.settings_dict
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or "5432"
    user = db.get("USER") or "root"
    (tmp_path / "logs").mkdir()
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{user}@{host}:{port}/{db['NAME']}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "STORAGE_ROOT": str(storage),
        "ROUTER_VAR_DIR": str(tmp_path / "var"),
        "EMAIL_FILE_PATH": str(tmp_path / "mail"),
        "RECONCILE_INTERVAL": "1",
        "RECONCILE_AFTER": "3",
        "DELIVERY_SWEEP_INTERVAL": "1",
        "HEALTH_CHECK_INTERVAL": "1",
        "SCP_SHUTDOWN_GRACE": "10",
        "STORAGE_MIN_FREE_BYTES": "1048576",  # CI machines may have little disk; a test of the watermark sets its own
        "TCP_NODELAY": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def log_dir(tmp_path) -> Path:
    path = tmp_path / "logs"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def start_scp(service_env, log_dir):
    """Start `manage.py runscp` on a free port; returns (process, port). With `tls_port`, the TLS listener
    too (the certificate and key come from `env`: SCP_TLS_CERT, SCP_TLS_KEY, SCP_TLS_CA); with `port=0`
    no plain listener."""
    started: list[Process] = []

    def start(
        env: dict | None = None, name: str = "scp", *, port: int | None = None, tls_port: int = 0
    ) -> tuple[Process, int]:
        port = free_port() if port is None else port
        proc = Process(
            name,
            procfile.command("scp", "--host", "127.0.0.1", "--port", str(port), "--tls-port", str(tls_port)),
            env=env or service_env,
            log_dir=log_dir,
        )
        started.append(proc)
        for listening in (port, tls_port):
            if listening:
                proc.wait_for_port(listening)
        return proc, port

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_worker(service_env, log_dir):
    """Start the Procfile's workers, one per queue group (intake, deliver, stat); returns the group's processes."""
    started: list[Process] = []

    def start(env: dict | None = None, purge: bool = True, roles: tuple[str, ...] = WORKER_ROLES) -> list[Process]:
        env = env or service_env
        if purge:
            import subprocess

            subprocess.run(celery("purge", "-f", "-Q", QUEUES), env=env, capture_output=True, timeout=30)
        group = [
            Process(
                f"{role}{len(started)}",
                procfile.command(role, "--without-gossip", "--without-mingle", "-n", f"{role}{len(started)}@%h"),
                env=env,
                log_dir=log_dir,
            )
            for role in roles
        ]
        started.extend(group)
        for proc in group:
            proc.wait_for_log("ready.", timeout=60)
        return group

    yield start
    stop_all(started, timeout=30)


@pytest.fixture
def start_beat(service_env, log_dir, tmp_path):
    started: list[Process] = []

    def start(env: dict | None = None) -> Process:
        proc = Process(
            f"beat{len(started)}",
            procfile.command("beat", "-s", str(tmp_path / f"beat{len(started)}-schedule")),
            env=env or service_env,
            log_dir=log_dir,
        )
        started.append(proc)
        proc.wait_for_log("beat: Starting", timeout=30)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def storescp(tmp_path, log_dir):
    """dcmtk storescp as a destination PACS; returns (process, port, folder)."""
    started: list[Process] = []

    def start(ae_title: str = "DEST", port: int | None = None) -> tuple[Process, int, Path]:
        port = port or free_port()
        folder = tmp_path / f"dest-{ae_title}"
        folder.mkdir(exist_ok=True)
        proc = Process(
            f"storescp-{ae_title}-{len(started)}",
            [require_tool("storescp"), "+xa", "-uf", "-aet", ae_title, "-od", str(folder), str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            log_dir=log_dir,
        )
        started.append(proc)
        proc.wait_for_port(port)
        return proc, port, folder

    yield start
    for proc in started:
        proc.stop()
