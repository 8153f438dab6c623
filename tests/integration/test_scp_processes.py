"""runscp --processes: several SCP processes on one port, as real processes, with pynetdicom and dcmtk peers."""

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from apps.studies.models import ReceivedInstance

from ..conftest import require_tool
from ..support import procfile
from ..support.dicom import synthetic_study
from ..support.processes import Process, children, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def established_on(pid: int, port: int) -> int:
    """How many established TCP connections to local `port` the process `pid` holds, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rpartition(":")[2], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


def runscp_children(supervisor: Process) -> list[int]:
    """The supervisor's live SCP processes (a reaped or zombie child has no command line)."""
    found = []
    for pid in children(supervisor.pid):
        try:
            if b"runscp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def scp_processes(supervisor: Process, expected: int) -> list[int]:
    def found():
        pids = runscp_children(supervisor)
        return pids if len(pids) == expected else None

    return wait_until(found, timeout=30, what=f"{expected} SCP processes")


def test_processes_share_the_port_and_each_serves_associations(start_scp, service_env, tmp_path):
    """Associations held open at once are spread over both processes by the kernel (SO_REUSEPORT), and
    every instance sent through any of them is recorded."""
    supervisor, port = start_scp({**service_env, "SCP_PROCESSES": "2"})
    pids = scp_processes(supervisor, 2)
    _, paths = synthetic_study(tmp_path / "in", count=24)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    held = []
    try:
        # The kernel picks a process per connection by a hash: 8 at a time all land on one of two with
        # probability 1/128, so keep opening (bounded) until each process holds one.
        for _ in range(3):
            for path in paths[len(held) : len(held) + 8]:
                assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
                assert assoc.is_established
                assert assoc.send_c_store(path).Status == 0x0000
                held.append(assoc)
            per_process = [established_on(pid, port) for pid in pids]
            if all(per_process):
                break
        assert sum(per_process) == len(held) and all(per_process), per_process
    finally:
        for assoc in held:
            assoc.release()
    assert ReceivedInstance.objects.count() == len(held)


def test_a_killed_process_is_started_again_and_sigterm_stops_them_all(start_scp, service_env):
    supervisor, port = start_scp({**service_env, "SCP_PROCESSES": "2"})
    first, second = scp_processes(supervisor, 2)
    os.kill(first, signal.SIGKILL)

    def replaced():
        pids = runscp_children(supervisor)
        return len(pids) == 2 and first not in pids

    wait_until(replaced, timeout=30, what="the killed process replaced")
    assert "stopped with exit code -9" in supervisor.log()
    echo = [require_tool("echoscu"), "-aec", "ROUTER", "127.0.0.1", str(port)]
    for _ in range(4):  # whichever process the kernel picks answers
        assert subprocess.run(echo, capture_output=True, timeout=30).returncode == 0
    survivors = runscp_children(supervisor)
    assert second in survivors
    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.popen.wait(30) == 0
    assert not [pid for pid in survivors if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def test_processes_that_cannot_start_make_the_supervisor_fail(service_env, log_dir):
    """The port held by another program: each process fails at once; after three failures in a row the
    supervisor stops and exits non-zero rather than restarting forever."""
    with socket.socket() as taken:
        port = free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        command = procfile.command("scp", "--host", "127.0.0.1", "--port", str(port), "--processes", "2")
        proc = Process("scp-taken", command, env=service_env, log_dir=log_dir)
        try:
            code = proc.popen.wait(90)
        finally:
            proc.stop()
    assert code != 0
    assert "stopped 3 times right after starting" in proc.log()
