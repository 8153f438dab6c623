"""The STOW-RS receiver as it runs: the Procfile's web process (gunicorn) on a free port, on the test
database and the test's storage; a sending account with a token."""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, User

from apps.accounts.services import token_issue
from apps.dicomweb.permissions import READERS_GROUP, STOW_SENDERS_GROUP

from ..support import procfile
from ..support.processes import BIN, Process, children, free_port


@dataclass
class Web:
    process: Process
    url: str

    @property
    def worker_pid(self) -> int:
        """The one gunicorn worker that serves the requests (WEB_WORKERS=1)."""
        (pid,) = children(self.process.pid)
        return pid


@pytest.fixture
def start_web(service_env, log_dir):
    """Start the Procfile's `web` role with one worker; `env` adds to the test's environment."""
    started: list[Process] = []

    def start(**env: str) -> Web:
        port = free_port()
        args = procfile.command("web", env={"WEB_PORT": str(port), "WEB_WORKERS": "1"})
        args[0] = str(BIN / "gunicorn")
        proc = Process(f"web{len(started)}", args, env={**service_env, **env}, log_dir=log_dir)
        started.append(proc)
        proc.wait_for_port(port)
        return Web(proc, f"http://127.0.0.1:{port}")

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def web(start_web) -> Web:
    return start_web()


@pytest.fixture
def sender(transactional_db) -> str:
    """The token of an account in the sender role (transactional tests flush what the migration made)."""
    user = User.objects.create(username="modality-gateway-7")
    user.groups.add(Group.objects.get_or_create(name=STOW_SENDERS_GROUP)[0])
    return token_issue(user=user, name="STOW-RS")[1]


@pytest.fixture
def outsider(transactional_db) -> str:
    """The token of an account with no sender role (an integration client that reads the API)."""
    user = User.objects.create(username="ris-reader")
    user.groups.add(Group.objects.get_or_create(name="integration")[0])
    return token_issue(user=user, name="status feed")[1]


@pytest.fixture
def reader(db) -> str:
    """The token of an account in the reader role (a viewer or a PACS that searches and retrieves)."""
    user = User.objects.create(username="viewer-3")
    user.groups.add(Group.objects.get_or_create(name=READERS_GROUP)[0])
    return token_issue(user=user, name="QIDO/WADO")[1]


@pytest.fixture
def staff_token(db) -> str:
    user = User.objects.create(username="admin-on-call", is_staff=True)
    return token_issue(user=user, name="staff")[1]
