"""A Celery worker runs Django's system checks at start and refuses to run when one fails."""

import subprocess

from ..support.processes import celery


def test_a_worker_refuses_to_start_when_a_system_check_fails(tmp_path, settings):
    env = {
        "PATH": "/usr/bin:/bin",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "ROUTER_VAR_DIR": str(tmp_path),
        "STORAGE_ROOT": str(tmp_path / "storage"),
        "SCP_AE_TITLE": "A_TITLE_FAR_TOO_LONG",  # core.E001
    }
    ran = subprocess.run(
        celery("worker", "-Q", "workflow", "--pool", "solo"), env=env, capture_output=True, text=True, timeout=60
    )

    assert ran.returncode != 0
    assert "core.E001" in ran.stdout + ran.stderr
