"""Production settings pass Django's deployment checks; the embedded default says it is not for production."""

import os
import secrets
import subprocess

from ..support.processes import python_manage

BASE = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "SECRET_KEY_FILE", "PRODUCTION", "DEBUG")}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(python_manage(*args), env={**BASE, **env}, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_on_the_production_settings(tmp_path):
    key = tmp_path / "secret"
    key.write_text(secrets.token_urlsafe(60))
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        PRODUCTION="true",
        SECRET_KEY_FILE=str(key),
        ALLOWED_HOSTS="router.example.org",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret():
    result = manage("check", PRODUCTION="true")
    assert result.returncode != 0
    assert "PRODUCTION is set: give SECRET_KEY or SECRET_KEY_FILE" in result.stderr


def test_the_embedded_default_says_loudly_it_is_not_for_production():
    result = manage("check")
    assert "core.W001" in result.stderr + result.stdout
