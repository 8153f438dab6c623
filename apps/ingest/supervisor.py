"""`runscp --processes N`: N SCP processes listening on one port, started, watched and stopped here.

One Python process receives on one core at most (pynetdicom's threads share one interpreter lock), so
modalities sending at the same time wait on each other. N processes bind the port with SO_REUSEPORT and
the kernel spreads new connections among them. An association is served by one process from its start to
its end, and each process keeps custody exactly as one alone does (fsync, commit, then success), so
nothing else changes.

A process that stops by itself (killed, crashed) is started again after RESTART_DELAY while the others
keep serving. One that keeps stopping right after it starts (the port taken by another program, the
database not migrated) makes the supervisor stop them all and fail, for the process manager to see.
"""

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

RESTART_DELAY = 1.0
EARLY_EXIT = 10.0  # seconds: a process that stops sooner than this after its start failed to start
MAX_EARLY_EXITS = 3  # in a row, for one process number, and the supervisor gives up
_PR_SET_PDEATHSIG = 1


def _die_with_supervisor() -> None:
    """In the child before exec: be sent SIGTERM when the supervisor dies, even by SIGKILL (a process
    left behind would keep serving the port with nobody watching it)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def command(*, host: str, port: int, ae_title: str, number: int) -> list[str]:
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    where = ["--host", host, "--port", str(port), "--ae-title", ae_title]
    return [sys.executable, manage, "runscp", *where, "--process-number", str(number)]


def _reserve_port(host: str) -> socket.socket:
    """For --port 0: a port every process can bind. The socket binds it with SO_REUSEPORT but does not
    listen, so the kernel never hands it a connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, 0))
    return reserved


def run(*, host: str, port: int, ae_title: str, processes: int, out) -> int:
    """Serve until SIGTERM or SIGINT, then stop every process the way runscp stops (open associations
    finish). Returns 0, or 1 if a process kept failing to start."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    reserved = _reserve_port(host) if port == 0 else None
    if reserved is not None:
        port = reserved.getsockname()[1]
    out.write(f"SCP {ae_title}: {processes} processes sharing {host}:{port}")
    out.flush()
    children: dict[int, tuple[subprocess.Popen, float]] = {}
    early_exits = dict.fromkeys(range(1, processes + 1), 0)

    def start(number: int) -> None:
        args = command(host=host, port=port, ae_title=ae_title, number=number)
        children[number] = (subprocess.Popen(args, preexec_fn=_die_with_supervisor), time.monotonic())

    failed = False
    try:
        for number in early_exits:
            start(number)
        while not failed and not stopping.wait(0.5):
            for number, (child, started) in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                early_exits[number] = early_exits[number] + 1 if time.monotonic() - started < EARLY_EXIT else 0
                logger.error("SCP process %d (pid %d) stopped with exit code %s", number, child.pid, code)
                if early_exits[number] >= MAX_EARLY_EXITS:
                    logger.error("SCP process %d stopped %d times right after starting", number, MAX_EARLY_EXITS)
                    failed = True
                    break
                if stopping.wait(RESTART_DELAY):
                    break
                start(number)
                logger.warning("SCP process %d started again (pid %d)", number, children[number][0].pid)
    finally:
        _stop_all([child for child, _ in children.values()])
        if reserved is not None:
            reserved.close()
    return 1 if failed else 0


def _stop_all(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.SCP_SHUTDOWN_GRACE + 10  # each finishes within its grace, then aborts
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("SCP process (pid %d) did not stop: killed", child.pid)
            child.kill()
            child.wait()
