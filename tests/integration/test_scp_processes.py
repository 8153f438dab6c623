"""runscp --processes: several SCP processes on one port, as real processes, with pynetdicom and dcmtk peers."""

import os
import re
import signal
import socket
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from apps.studies.models import ReceivedInstance

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


def serving(supervisor: Process) -> int:
    """How many times an SCP process said it listens (each says so once, as it starts)."""
    return len(re.findall(r"listening on \S+ \(process \d+\)", supervisor.log()))


def scp_processes(supervisor: Process, expected: int) -> list[int]:
    """The supervisor's SCP processes, once `expected` of them are serving (each logged that it listens)."""

    def found():
        pids = runscp_children(supervisor)
        return pids if len(pids) == expected and serving(supervisor) == expected else None

    return wait_until(found, timeout=30, what=f"{expected} SCP processes serving")


# These tests hold up to 24 associations from one address (the test's), more than one address may hold by
# default (SCP_MAX_ASSOCIATIONS_PER_ADDRESS, docs/security.md): as a site allows a modality that does so.
ONE_HOST_MANY = {"SCP_PROCESSES": "2", "SCP_MAX_ASSOCIATIONS_PER_ADDRESS": "16"}


def hold_until_each_serves(port: int, pids: list[int], paths: list[Path]) -> list:
    """Open associations (each stores one file) and hold them until every process in `pids` serves one.
    Whichever process is free first accepts a connection: 24 all landing on one of two would be a fault."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    held = []
    for path in paths:
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        held.append(assoc)
        assert assoc.is_established
        assert assoc.send_c_store(path).Status == 0x0000
        if all(established_on(pid, port) for pid in pids):
            return held
    per_process = [established_on(pid, port) for pid in pids]
    for assoc in held:
        assoc.release()
    raise AssertionError(f"{len(held)} associations, per process {per_process}")


def test_processes_share_the_port_and_each_serves_associations(start_scp, service_env, tmp_path):
    """Associations held open at once are served by both processes, and every instance sent through any
    of them is recorded."""
    supervisor, port = start_scp({**service_env, **ONE_HOST_MANY})
    pids = scp_processes(supervisor, 2)
    _, paths = synthetic_study(tmp_path / "in", count=24)
    held = hold_until_each_serves(port, pids, paths)
    try:
        assert sum(established_on(pid, port) for pid in pids) == len(held)
    finally:
        for assoc in held:
            assoc.release()
    assert ReceivedInstance.objects.count() == len(held)


def test_a_killed_process_is_started_again_and_sigterm_stops_them_all(start_scp, service_env, tmp_path):
    supervisor, port = start_scp({**service_env, **ONE_HOST_MANY})
    first, second = scp_processes(supervisor, 2)
    os.kill(first, signal.SIGKILL)

    def replaced():
        pids = runscp_children(supervisor)
        return pids if len(pids) == 2 and first not in pids and serving(supervisor) == 3 else None

    survivors = wait_until(replaced, timeout=30, what="the killed process replaced and serving")
    assert second in survivors
    assert "stopped with exit code -9" in supervisor.log()
    _, paths = synthetic_study(tmp_path / "in", count=24)
    for assoc in hold_until_each_serves(port, survivors, paths):  # the new process serves too
        assoc.release()
    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.popen.wait(30) == 0
    assert not [pid for pid in survivors if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def supervisor_until_it_stops(port: int, env: dict, log_dir: Path, *, timeout: float) -> tuple[int, Process]:
    """Run `runscp --processes 2` on `port` until it exits by itself (within `timeout`): its exit code and log."""
    command = procfile.command("scp", "--host", "127.0.0.1", "--port", str(port), "--processes", "2")
    proc = Process(f"scp-{port}", command, env=env, log_dir=log_dir)
    try:
        code = proc.popen.wait(timeout)
    finally:
        proc.stop()
    return code, proc


def test_a_port_in_use_fails_at_once_with_a_clear_error(service_env, log_dir):
    """Another program listens on the port: the supervisor, which listens for all its processes, fails
    before starting any, and says why."""
    with socket.socket() as taken:
        port = free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        code, proc = supervisor_until_it_stops(port, service_env, log_dir, timeout=60)
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in proc.log()
    assert serving(proc) == 0


def test_processes_that_keep_failing_to_start_make_the_supervisor_give_up(service_env, log_dir, tmp_path):
    """A spool the SCP processes cannot use (its temp folder is a file): each stops right after starting;
    after three times in a row the supervisor stops (rather than restarting forever) and exits non-zero."""
    storage = tmp_path / "broken-storage"
    storage.mkdir()
    (storage / "tmp").write_text("")
    env = {**service_env, "STORAGE_ROOT": str(storage)}
    code, proc = supervisor_until_it_stops(free_port(), env, log_dir, timeout=120)
    assert code != 0
    assert "stopped 3 times right after starting" in proc.log()
    assert proc.log().count("started again") >= 2
