"""One source of truth for the processes: docker-compose.yml runs what the Procfile says, and the tests
start the Procfile's commands."""

import yaml

from ..support import procfile
from ..support.processes import ROOT

# Values docker-compose gives the variables the Procfile leaves to the environment.
# Ports are fixed inside the containers (compose publishes them); sizes stay tunable from the environment.
COMPOSE_ENV = {
    "WEB_PORT": "8000",
    "WEB_WORKERS": "${WEB_WORKERS:-2}",
    "WEB_THREADS": "${WEB_THREADS:-16}",
    "WEB_TIMEOUT": "${WEB_TIMEOUT:-300}",
    "WORKER_CONCURRENCY": "${WORKER_CONCURRENCY:-2}",
    "DELIVER_CONCURRENCY": "${DELIVER_CONCURRENCY:-2}",
    "STAT_CONCURRENCY": "${STAT_CONCURRENCY:-2}",
    "WORKER_NICE": "${WORKER_NICE:-10}",
    "FLOWER_PORT": "5555",
    "FLOWER_BASIC_AUTH": "${FLOWER_BASIC_AUTH:?user:password}",
}


def test_docker_compose_runs_the_procfile_s_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    roles = procfile.commands(env=COMPOSE_ENV)
    assert set(roles) == {"release", "web", "worker", "worker-deliver", "worker-stat", "beat", "scp", "flower"}
    for role, args in roles.items():
        assert compose[role]["command"] == args, role


def test_the_tests_start_the_procfile_s_commands():
    worker = procfile.command("worker", "--without-gossip")
    assert worker[-1] == "--without-gossip"
    assert [arg.rpartition("/")[2] for arg in worker[:-1]] == procfile.commands()["worker"]
    assert procfile.command("scp")[2:] == ["runscp"]
