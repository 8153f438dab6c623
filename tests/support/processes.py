"""Real processes for the tests: start, wait until they listen, stop by pid. Every wait is bounded."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Process:
    """A child process with its output in a log file; stopped by its own pid only."""

    def __init__(self, name: str, args: list[str], *, env: dict, log_dir: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_port(self, port: int, timeout: float = 30) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            return port_open(port)

        wait_until(ready, timeout=timeout, what=f"{self.name} to listen on {port}")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_until(ready, timeout=timeout, what=f"{self.name} to log {text!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.alive():
            os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def stop_all(processes: list["Process"], timeout: float = 30) -> None:
    """Stop several processes at once: all are signalled first, then each is waited for."""
    for proc in processes:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    for proc in processes:
        proc.stop(timeout=timeout)


def children(pid: int) -> list[int]:
    """The pids of a process's children (a Celery worker's pool), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def kill_hard(proc: "Process") -> None:
    """SIGKILL a process and its children at once, as the OOM killer or a power cut would."""
    for pid in [*children(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.popen.wait(10)


def python_manage(*args: str) -> list[str]:
    return [str(BIN / "python"), str(ROOT / "manage.py"), *args]


def celery(*args: str) -> list[str]:
    return [str(BIN / "celery"), "-A", "routerproject", *args]


def dcmtk(name: str) -> str:
    """dcmtk's own tool, never pynetdicom's same-named app that pip puts in the venv's bin."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None or Path(found).parent == BIN:
        raise FileNotFoundError(f"dcmtk's {name} is not installed (make test installs the dcmtk package)")
    return found


def connections_held(pid: int, port: int) -> int:
    """The connections the process `pid` accepted on `port` and still holds open (its listener aside).

    Counted by socket, not by descriptor: a database or broker connection the process opens meanwhile (a
    heartbeat, say) is no connection a peer made, and once made a difference of one to a descriptor count.
    """
    held = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
                if local_port == port and state != "0A":  # 0A: LISTEN
                    held.add(f"socket:[{inode}]")
    fds = f"/proc/{pid}/fd"
    return sum(1 for fd in os.listdir(fds) if _link(f"{fds}/{fd}") in held)


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return ""  # closed while we looked
