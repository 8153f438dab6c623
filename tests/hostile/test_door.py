"""A hostile host on the same network (127.0.0.2) against a modality (127.0.0.1): silent connections, byte-a-
time senders and floods of short associations must not keep the modality's study out (apps/ingest/door.py).

Each study's time under attack is compared with a quiet run in the same test (the best of three runs each,
so that the machine's other work does not decide): within twice the quiet time, as the issue asks, beside idle
connections and during a flood of short associations (whose host is paced while the modality is served).
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.test import Client

from apps.ops.models import Heartbeat

from ..support.dicom import storescu, synthetic_study
from ..support.processes import connections_held, wait_until
from . import ASSOCIATE_AC, associate_rq, pdu_header, read_pdu

ATTACKER = "127.0.0.2"
ROOT = Path(__file__).resolve().parents[2]
RUNS = 3


def study_time(port: int, folder: Path, runs: int = RUNS) -> float:
    """The best of `runs` sends of a new 50-instance study from 127.0.0.1 by dcmtk's storescu."""
    best = None
    for run in range(runs):
        _, paths = synthetic_study(folder / f"run{run}", count=50)
        start = time.monotonic()
        result = storescu(port, paths)
        elapsed = time.monotonic() - start
        assert result.returncode == 0, result.stdout + result.stderr
        best = elapsed if best is None else min(best, elapsed)
    return best


def connect_from(address: str, port: int, timeout: float = 5) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        return sock.recv(1 << 16) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def threads_and_descriptors(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def door_env(service_env) -> dict:
    return {
        **service_env,
        "SCP_NEGOTIATION_TIMEOUT": "2",
        "SCP_IDLE_TIMEOUT": "3",
        "HEARTBEAT_INTERVAL": "1",
    }


def test_200_idle_connections_from_one_host_do_not_keep_a_modality_out(start_scp, door_env, tmp_path):
    scp, port = start_scp(door_env)
    # A quiet run, then one beside 200 idle connections, up to three rounds: a timing ratio on a shared machine
    # needs more than one sample (a CI run read 2.09x once); the mechanisms are asserted below as they are.
    ratios = []
    for round_ in range(3):
        quiet = study_time(port, tmp_path / f"quiet{round_}")
        idle = []
        try:
            for _ in range(200):
                idle.append(connect_from(ATTACKER, port))
            attacked = study_time(port, tmp_path / f"attacked{round_}")
            # All but the 8 pending connections one address may hold were closed at once, those 8 at the
            # negotiation deadline (2 s here).
            wait_until(lambda idle=idle: all(closed(s) for s in idle), timeout=20, what="every idle connection closed")
        finally:
            for sock in idle:
                sock.close()
        print(f"50 instances: quiet {quiet:.3f} s, beside 200 idle connections {attacked:.3f} s")
        ratios.append(attacked / quiet)
        if ratios[-1] <= 2:
            break
    assert min(ratios) <= 2, ratios

    def counted():
        beat = Heartbeat.objects.filter(role="scp").first()
        refused = beat.counters.get("refused", {}) if beat else {}
        return refused.get("pending_per_address", 0) >= 150 and refused.get("negotiation_timeout", 0) >= 1

    wait_until(counted, timeout=10, what="the refusals reported by the SCP's heartbeat")
    metrics = Client().get("/metrics").content.decode()
    lines = [line for line in metrics.splitlines() if line.startswith("router_scp_refused_connections_total{")]
    assert any('reason="pending_per_address"' in line for line in lines), lines
    assert any('reason="negotiation_timeout"' in line for line in lines), lines
    assert scp.log().count("refused: pending per address limit") == 1  # once a minute, not 192 lines


def trickle_negotiation(port: int, outcome: dict) -> None:
    """An A-ASSOCIATE-RQ a byte at a time (one every 0.1 s: 7 s for the whole request)."""
    with connect_from(ATTACKER, port) as sock:
        start = time.monotonic()
        try:
            for byte in associate_rq():
                sock.sendall(bytes([byte]))
                if closed(sock):
                    break
                sock.setblocking(True)
                time.sleep(0.1)
        except OSError:
            pass
        outcome.setdefault("negotiation", []).append(time.monotonic() - start)


def trickle_dataset(port: int, outcome: dict) -> None:
    """Associated, then a P-DATA-TF a byte at a time, never whole."""
    with connect_from(ATTACKER, port) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == ASSOCIATE_AC
        start = time.monotonic()
        sock.sendall(pdu_header(0x04, 1000))
        try:
            for _ in range(100):
                sock.sendall(b"\0")
                if closed(sock):
                    break
                sock.setblocking(True)
                time.sleep(0.1)
        except OSError:
            pass
        outcome.setdefault("dataset", []).append(time.monotonic() - start)


def test_byte_a_time_senders_are_dropped_at_their_deadlines_while_a_study_goes_through(start_scp, door_env, tmp_path):
    _, port = start_scp(door_env)
    outcome: dict = {}
    attackers = [threading.Thread(target=trickle_negotiation, args=(port, outcome)) for _ in range(4)]
    attackers += [threading.Thread(target=trickle_dataset, args=(port, outcome)) for _ in range(4)]
    for thread in attackers:
        thread.start()
    study_time(port, tmp_path / "study", runs=1)  # succeeds meanwhile
    for thread in attackers:
        thread.join(timeout=30)
    print(f"negotiation dropped after {outcome['negotiation']} s, mid-dataset after {outcome['dataset']} s")
    assert len(outcome["negotiation"]) == 4 and all(1.5 <= t <= 4 for t in outcome["negotiation"])
    assert len(outcome["dataset"]) == 4 and all(2.5 <= t <= 6 for t in outcome["dataset"])


def flood(port: int, count: int, stop: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-m", "tests.hostile.flood", str(port), ATTACKER, str(count), str(stop)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_2000_short_associations_from_one_host_leave_a_modality_served_and_the_scp_nothing_held(
    start_scp, door_env, tmp_path, record_property
):
    scp, port = start_scp(door_env)
    stop = tmp_path / "stop"
    stop.touch()
    warm = flood(port, 200, stop)  # the first associations load what the SCP needs
    assert warm.wait(timeout=120) == 0
    stop.unlink()
    wait_until(lambda: threads_and_descriptors(scp.pid)[0] <= 4, timeout=10, what="warm-up threads ended")
    before, rss_before = threads_and_descriptors(scp.pid), rss_kb(scp.pid)

    # Quiet and attacked runs alternate (the attacker stopped, then running), so that whatever else the
    # machine does weighs on both alike; the best of each is compared.
    attacker = flood(port, 2000, stop)
    quiet_runs, attacked_runs = [], []
    try:
        for run in range(6):
            attacker.send_signal(signal.SIGSTOP)
            quiet_runs.append(study_time(port, tmp_path / f"quiet{run}", runs=1))
            attacker.send_signal(signal.SIGCONT)
            attacked_runs.append(study_time(port, tmp_path / f"attacked{run}", runs=1))
    finally:
        attacker.send_signal(signal.SIGCONT)
        stop.touch()
    quiet, attacked = min(quiet_runs), min(attacked_runs)
    output, _ = attacker.communicate(timeout=300)
    done, refused = map(int, output.split())
    print(
        f"50 instances: quiet {quiet:.3f} s, during the flood {attacked:.3f} s; "
        f"flood: {done} associations, {refused} refused"
    )
    record_property("study_seconds", {"quiet": round(quiet, 3), "flood": round(attacked, 3)})
    assert attacked <= 2 * quiet
    assert done >= 2000 and refused == 0  # paced, never refused (the next test shows the pace itself)
    wait_until(
        lambda: connections_held(scp.pid, port) == 0 and threads_and_descriptors(scp.pid)[0] <= before[0],
        timeout=15,
        what=f"no connection held, threads back to {before[0]}",
    )
    grown = rss_kb(scp.pid) - rss_before
    print(f"RSS {rss_before} kB before the flood, +{grown} kB after it")
    assert grown < 16 * 1024


def test_a_host_starting_associations_faster_than_its_pace_waits_its_turn_only_while_another_is_served(
    start_scp, door_env
):
    # Bursts of 12.5; the modality's association below stays open while it waits (no 3 s idle timeout).
    scp, port = start_scp({**door_env, "SCP_ASSOCIATION_PACE_PER_ADDRESS": "5", "SCP_IDLE_TIMEOUT": "60"})

    def associations(count: int) -> list[float]:
        """`count` associations one after the other from the attacker's address; when each was accepted."""
        started, accepted = time.monotonic(), []
        for _ in range(count):
            with connect_from(ATTACKER, port) as sock:
                sock.sendall(associate_rq())
                assert read_pdu(sock)[0] == ASSOCIATE_AC
                accepted.append(time.monotonic() - started)
                sock.sendall(pdu_header(0x05, 4) + b"\0\0\0\0")
                read_pdu(sock)
        return accepted

    def paced() -> int:
        beat = Heartbeat.objects.filter(role="scp").first()
        return (beat.counters or {}).get("paced", 0) if beat else -1

    associations(30)  # alone: never held, whatever its rate
    wait_until(lambda: paced() == 0, timeout=10, what="a heartbeat saying nothing was paced")
    with connect_from("127.0.0.1", port) as modality:  # another host's association, open meanwhile
        modality.sendall(associate_rq())
        assert read_pdu(modality)[0] == ASSOCIATE_AC
        accepted = associations(30)
        modality.sendall(pdu_header(0x05, 4) + b"\0\0\0\0")
        read_pdu(modality)
    # At most a burst (12.5, refilled while the heartbeat was awaited) goes at once; beyond it each waits its
    # turn at 5 a second: the last 15 take at least 3 s.
    print(f"30 associations while another host is served: accepted after {[round(t, 2) for t in accepted]} s")
    assert accepted[-1] - accepted[14] >= 2.5
    wait_until(lambda: paced() >= 15, timeout=10, what="the paced associations in the SCP's heartbeat")
    metrics = Client().get("/metrics").content.decode()
    assert any(line.startswith("router_scp_paced_associations_total{") for line in metrics.splitlines())
    assert scp.log().count(f"associations from {ATTACKER} paced to 5 a second while others are served") == 1
    assert "refused" not in scp.log()


def test_one_hosts_associations_beyond_its_limit_are_rejected_as_transient_unless_its_entry_says_more(
    start_scp, service_env
):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from apps.configuration.services import config_import

    _, port = start_scp({**service_env, "SCP_MAX_ASSOCIATIONS_PER_ADDRESS": "2", "HEARTBEAT_INTERVAL": "1"})
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    held = [ae.associate("127.0.0.1", port, ae_title="ROUTER") for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        third = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        assert third.is_rejected
        rejection = third.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x02, 0x03, 0x02)
        # Another host is not held back by this one's associations.
        other = AE(ae_title="OTHER")
        other.add_requested_context(CTImageStorage)
        elsewhere = other.associate("127.0.0.1", port, ae_title="ROUTER", bind_address=(ATTACKER, 0))
        assert elsewhere.is_established
        elsewhere.release()
        # The allow-list gives this host a figure of its own: the SCP reads it at each association and each
        # heartbeat (HEARTBEAT_INTERVAL, 1 s here).
        config_import(
            "callers:\n  - {ae_title: MODALITY, host: 127.0.0.1, max_associations: 3}\n  - {ae_title: OTHER}\n"
        )

        def admitted():
            assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
            if assoc.is_established:
                held.append(assoc)
            return assoc.is_established

        wait_until(admitted, timeout=5, interval=0.2, what="a third association once the entry allows it")
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
