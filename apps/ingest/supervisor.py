"""`runscp --processes N`: N SCP processes accepting from one listening socket, started, watched and
stopped here.

One Python process receives on one core at most (pynetdicom's threads share one interpreter lock), so
modalities sending at the same time wait on each other. The supervisor binds and listens on the port
itself (a port already in use fails here, at once and clearly) and hands the socket to N processes;
whichever is free first accepts a new connection, and serves that association to its end. Each process
keeps custody exactly as one alone does (fsync, commit, then success), so nothing else changes.

A process that stops by itself (killed, crashed) is started again after RESTART_DELAY while the others
keep serving; connections that arrive meanwhile wait in the socket's backlog. One that keeps stopping
right after it starts (storage it cannot write, say) makes the supervisor stop them all and fail, for
the process manager to see.
"""

import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

POLL = 0.5  # seconds between looks at the processes
RESTART_DELAY = 1.0
EARLY_EXIT = 10.0  # seconds: a process that stops sooner than this after its start failed to start
MAX_EARLY_EXITS = 3  # in a row, for one process number, and the supervisor gives up
BACKLOG = 128  # connections waiting for a process to accept them
_PR_SET_PDEATHSIG = 1


class StopSignals:
    """SIGTERM or SIGINT asked this process to stop. The handler only sets a flag: threading.Event.set()
    in a signal handler can deadlock with the main thread's own Event.wait(), which holds the same lock
    for a moment on every wake."""

    def __init__(self) -> None:
        self.received = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, *_) -> None:
        self.received = True

    def wait(self, seconds: float | None = None) -> bool:
        """Until a stop signal came (True) or `seconds` passed (False)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self.received:
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every SCP process accepts from. Raises OSError (the port in use, say)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom: TIME_WAIT is no obstacle
        listener.bind(address)
        listener.listen(BACKLOG)
    except OSError:
        listener.close()
        raise
    return listener


def command(*, host: str, ae_title: str, number: int, listeners: dict[str, socket.socket]) -> list[str]:
    """A process's command line: each listener's port and descriptor (a kind absent is port 0: none)."""
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    args = [sys.executable, manage, "runscp", "--host", host, "--ae-title", ae_title, "--process-number", str(number)]
    for kind, option in (("plain", "port"), ("tls", "tls-port")):
        listener = listeners.get(kind)
        args += [f"--{option}", str(listener.getsockname()[1] if listener else 0)]
        if listener:
            args += ["--listen-fd" if kind == "plain" else "--tls-listen-fd", str(listener.fileno())]
    return args


def _die_with_supervisor(libc: ctypes.CDLL, supervisor: int) -> None:
    """In the child before exec: be sent SIGTERM when the supervisor dies, even by SIGKILL (a process
    left behind would keep serving the port with nobody watching it); if it already died, stop now."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:
        os._exit(1)


def run(*, listeners: dict[str, socket.socket], host: str, ae_title: str, processes: int, out) -> int:
    """Serve until SIGTERM or SIGINT, then stop every process the way runscp stops (open associations
    finish); SIGHUP is passed on to every process (TLS files read again). `listeners`: "plain" and "tls".
    Returns 0; 1 if a process kept failing to start, or had to be killed at the end."""
    stop = StopSignals()
    ports = ", ".join(
        f"{host}:{s.getsockname()[1]}{' (TLS)' if kind == 'tls' else ''}" for kind, s in listeners.items()
    )
    out.write(f"SCP {ae_title}: {processes} processes on {ports}")
    out.flush()
    fds = tuple(s.fileno() for s in listeners.values())
    preexec = functools.partial(_die_with_supervisor, ctypes.CDLL(None, use_errno=True), os.getpid())
    children: dict[int, tuple[subprocess.Popen, float]] = {}
    restart_at: dict[int, float] = {}
    early_exits = dict.fromkeys(range(1, processes + 1), 0)

    def start(number: int) -> None:
        args = command(host=host, ae_title=ae_title, number=number, listeners=listeners)
        children[number] = (subprocess.Popen(args, pass_fds=fds, preexec_fn=preexec), time.monotonic())

    def pass_on_hangup(*_) -> None:
        for child, _ in list(children.values()):
            if child.poll() is None:
                child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, pass_on_hangup)

    failed = False
    try:
        for number in early_exits:
            start(number)
        while not failed and not stop.wait(POLL):
            now = time.monotonic()
            for number, (child, started) in children.items():
                code = child.poll()
                if code is None or number in restart_at:
                    continue
                early_exits[number] = early_exits[number] + 1 if now - started < EARLY_EXIT else 0
                logger.error("SCP process %d (pid %d) stopped with exit code %s", number, child.pid, code)
                if early_exits[number] >= MAX_EARLY_EXITS:
                    logger.error("SCP process %d stopped %d times right after starting", number, MAX_EARLY_EXITS)
                    failed = True
                restart_at[number] = now + RESTART_DELAY
            for number, due in list(restart_at.items()):
                if not failed and due <= now:
                    del restart_at[number]
                    start(number)
                    logger.warning("SCP process %d started again (pid %d)", number, children[number][0].pid)
    finally:
        killed = _stop_all([child for child, _ in children.values()], list(listeners.values()))
    return 1 if failed or killed else 0


def _stop_all(children: list[subprocess.Popen], listeners: list[socket.socket]) -> bool:
    """SIGTERM to every process, then close our copy of the socket (each process closes its own as it
    stops accepting, so new connections are refused); wait for each. True if one had to be killed."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for listener in listeners:
        listener.close()
    killed = False
    deadline = time.monotonic() + settings.SCP_SHUTDOWN_GRACE + 5  # each aborts what is left at its grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("SCP process (pid %d) did not stop: killed", child.pid)
            child.kill()
            child.wait()
            killed = True
    return killed
