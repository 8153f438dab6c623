"""Two independent SCP nodes behind Debian's HAProxy (TCP mode, round robin, TCP health checks, PROXY protocol
v2), as on two hosts: separate processes and ports, one STORAGE_ROOT, one PostgreSQL, one Redis. Delivery
workers run as on other hosts: another working directory, only STORAGE_ROOT in common."""

import io
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification

from apps.configuration.services import config_import
from apps.ingest.models import AllowedCaller
from apps.reading.models import Assignment
from apps.routing.models import Delivery, DeliveryItem, RoutingDecision
from apps.studies.models import Instance, ReceivedInstance, Study

from ..conftest import QUEUES, WORKER_ROLES
from ..support import procfile
from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import dataset_bytes, storescu, synthetic_study
from ..support.haproxy import BALANCER_SOURCE, HAProxy
from ..support.processes import ROOT, Process, celery, kill_hard, stop_all, wait_until
from .test_scp_processes import established_on

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: archive, ae_title: ARCHIVE, host: 127.0.0.1, port: %d, retry_base_delay: 1}
rules:
  - {name: everything CT, priority: 10, match: {modality: CT}, destinations: [archive]}
"""


@dataclass
class Node:
    name: str
    process: Process
    port: int


@dataclass
class Cluster:
    nodes: dict[str, Node]
    balancer: HAProxy
    env: dict

    @property
    def port(self) -> int:
        return self.balancer.port

    def serving(self) -> Node:
        """The one node holding an established connection (the balancer's, for the association open now)."""
        holding = [n for n in self.nodes.values() if n.process.alive() and established_on(n.process.pid, n.port)]
        assert len(holding) == 1, [n.name for n in holding]
        return holding[0]

    def other(self, node: Node) -> Node:
        return next(n for n in self.nodes.values() if n is not node)


@pytest.fixture
def cluster(start_scp, service_env, log_dir, tmp_path):
    env = {**service_env, "SCP_PROXY_PROTOCOL": "true", "SCP_PROXY_FROM": BALANCER_SOURCE}
    nodes = {}
    for name in ("scp1", "scp2"):
        process, port = start_scp(env, name)
        nodes[name] = Node(name, process, port)
    balancer = HAProxy(nodes={n.name: n.port for n in nodes.values()}, folder=tmp_path / "haproxy", log_dir=log_dir)
    for name in nodes:
        balancer.wait_for_status(name, "UP")
    yield Cluster(nodes, balancer, env)
    balancer.stop()


@pytest.fixture
def workers_elsewhere(service_env, log_dir, tmp_path):
    """The Procfile's workers as on another host: their own working directory and var folder; the code is
    installed there too (PYTHONPATH), and STORAGE_ROOT is the only folder shared with the SCP nodes."""
    host = tmp_path / "worker-host"
    host.mkdir()
    env = {**service_env, "PYTHONPATH": str(ROOT), "ROUTER_VAR_DIR": str(host / "var")}
    started: list[Process] = []

    def start() -> list[Process]:
        subprocess.run(celery("purge", "-f", "-Q", QUEUES), env=env, capture_output=True, timeout=30, check=True)
        for role in WORKER_ROLES:
            command = procfile.command(role, "--without-gossip", "--without-mingle", "-n", f"{role}-elsewhere@%h")
            started.append(Process(f"{role}-elsewhere", command, env=env, log_dir=log_dir, cwd=host))
        for proc in started:
            proc.wait_for_log("ready.", timeout=60)
        return started

    yield start
    stop_all(started, timeout=30)


def delivered(folder: Path, count: int) -> None:
    wait_until(lambda: len(list(folder.iterdir())) >= count, timeout=90, what=f"{count} instances delivered")
    wait_until(
        lambda: DeliveryItem.objects.filter(state="delivered").count() >= count,
        timeout=30,
        what=f"{count} delivery items delivered",
    )


def associate(port: int, *, ae_title: str = "MODALITY", bind: str = "127.0.0.1"):
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="ROUTER", bind_address=(bind, 0))


def send_part_of(assoc, path: Path) -> None:
    """Start a C-STORE of `path` and stop in the middle of its dataset, as a modality cut off mid-send: the
    command and all but the last P-DATA-TF of the dataset, in 4 KB PDUs, straight onto the socket."""
    ds = dcmread(path, stop_before_pixels=True)
    primitive = C_STORE()
    primitive.MessageID = 999
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(dataset_bytes(path))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
    pdus = []
    for data in message.encode_msg(context.context_id, 4096):
        pdu = P_DATA_TF()
        pdu.from_primitive(data)
        pdus.append(pdu.encode())
    assert len(pdus) > 3
    assoc.dul.socket.socket.sendall(b"".join(pdus[:-1]))


def temp_files(storage: Path) -> list[Path]:
    return list((storage / "tmp").glob("*.part"))


def test_a_study_over_both_nodes_is_one_study_routed_delivered_and_assigned_once_by_workers_elsewhere(
    cluster, workers_elsewhere, storescp, tmp_path
):
    _, archive_port, archive = storescp("ARCHIVE")
    config_import(CONFIG % archive_port + ACHEN_ON_SHIFT)
    workers = workers_elsewhere()
    uid, paths = synthetic_study(tmp_path / "modality", count=8)
    before = {name: cluster.balancer.taken(name) for name in cluster.nodes}  # the fixture's port probe took one

    for first in range(0, 8, 2):  # four associations; round robin puts two on each node
        result = storescu(cluster.port, paths[first : first + 2])
        assert result.returncode == 0, result.stderr

    assert {name: cluster.balancer.taken(name) - before[name] for name in cluster.nodes} == {"scp1": 2, "scp2": 2}
    delivered(archive, 8)
    wait_until(lambda: Assignment.objects.count(), timeout=30, what="the assignment")
    assert {dataset_bytes(p) for p in archive.iterdir()} == {dataset_bytes(p) for p in paths}
    assert Study.objects.get().study_instance_uid == uid
    assert Instance.objects.count() == 8
    assert RoutingDecision.objects.get().destinations == ["archive"]
    assert Delivery.objects.count() == 1
    assert DeliveryItem.objects.count() == 8
    assert Assignment.objects.get().radiologist.user.username == "achen"
    # Every instance records the modality's address (through the PROXY header), never the balancer's.
    assert set(ReceivedInstance.objects.values_list("peer_address", flat=True)) == {"127.0.0.1"}
    # The workers ran from their own folder: nothing of theirs needed the SCP nodes' working directory.
    assert all(Path(f"/proc/{w.pid}/cwd").resolve() == tmp_path / "worker-host" for w in workers)


def test_a_node_killed_mid_association_loses_no_accepted_instance_and_its_temp_files_go_when_it_returns(
    cluster, start_scp, workers_elsewhere, storescp, storage, tmp_path
):
    _, archive_port, archive = storescp("ARCHIVE")
    config_import(CONFIG % archive_port + ACHEN_ON_SHIFT)
    workers_elsewhere()
    _, paths = synthetic_study(tmp_path / "modality", count=6)
    assoc = associate(cluster.port)
    assert assoc.is_established
    for path in paths[:3]:
        assert assoc.send_c_store(path).Status == 0x0000
    node = cluster.serving()
    send_part_of(assoc, paths[3])
    wait_until(lambda: temp_files(storage), timeout=10, what="the cut-off instance's temp file")

    kill_hard(node.process)
    wait_until(lambda: not assoc.is_established, timeout=10, what="the modality to see its association end")
    cluster.balancer.wait_for_status(node.name, "DOWN")
    # The modality's retry: everything it was not told was stored, in a new association, on the other node.
    before = cluster.balancer.taken(cluster.other(node).name)
    result = storescu(cluster.port, paths[3:])
    assert result.returncode == 0, result.stderr
    assert cluster.balancer.taken(cluster.other(node).name) == before + 1

    delivered(archive, 6)
    assert {dataset_bytes(p) for p in archive.iterdir()} == {dataset_bytes(p) for p in paths}
    assert DeliveryItem.objects.count() == 6
    assert Study.objects.count() == 1
    assert len(temp_files(storage)) == 1  # left by the dead node until it comes back

    start_scp(cluster.env, f"{node.name}-again", port=node.port)
    assert temp_files(storage) == []  # runscp sweeps the spool before it listens
    cluster.balancer.wait_for_status(node.name, "UP")


def test_a_drained_node_finishes_its_association_while_new_ones_go_to_the_other(cluster, tmp_path):
    _, paths = synthetic_study(tmp_path / "modality", count=9)
    assoc = associate(cluster.port)
    assert assoc.is_established
    assert assoc.send_c_store(paths[0]).Status == 0x0000
    node = cluster.serving()
    other = cluster.other(node)

    node.process.popen.send_signal(signal.SIGTERM)
    cluster.balancer.wait_for_status(node.name, "DOWN")  # it stopped listening: the TCP check fails
    taken = cluster.balancer.taken(node.name), cluster.balancer.taken(other.name)
    for first in (3, 6):
        result = storescu(cluster.port, paths[first : first + 3])
        assert result.returncode == 0, result.stderr
    assert cluster.balancer.taken(node.name) == taken[0]
    assert cluster.balancer.taken(other.name) == taken[1] + 2

    for path in paths[1:3]:  # the open association goes on, on the draining node
        assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    assert node.process.popen.wait(30) == 0
    assert "(0 associations aborted)" in node.process.log()
    assert ReceivedInstance.objects.count() == 9


def test_the_allow_list_sees_the_modality_through_the_balancer_and_a_balancer_without_header_is_dropped(
    cluster, tmp_path
):
    AllowedCaller.objects.create(ae_title="MODALITY", host="127.0.0.1")
    AllowedCaller.objects.create(ae_title="ELSEWHERE", host="127.0.0.9")
    AllowedCaller.objects.create(ae_title="BALANCED", host=BALANCER_SOURCE)
    _, paths = synthetic_study(tmp_path / "modality", count=1)

    admitted = associate(cluster.port)
    assert admitted.is_established
    assert admitted.send_c_store(paths[0]).Status == 0x0000
    admitted.release()
    assert ReceivedInstance.objects.get().peer_address == "127.0.0.1"
    for title in ("ELSEWHERE", "BALANCED"):  # bound to another host; bound to the balancer itself
        refused = associate(cluster.port, ae_title=title)
        assert refused.is_rejected, title

    # Straight to a node from the balancer's address, without a header: dropped before any association.
    node = cluster.nodes["scp1"]
    direct = associate(node.port, bind=BALANCER_SOURCE)
    assert not direct.is_established and not direct.is_rejected
    wait_until(lambda: "dropped: no PROXY header" in node.process.log(), timeout=10, what="the drop logged")
    # From any other address a connection is a direct one: its own address is the one admitted.
    direct = associate(node.port)
    assert direct.is_established
    direct.release()


def test_the_balancer_config_shipped_in_deploy_is_valid():
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_host_behind_the_balancer_meets_the_doors_limits_by_its_own_address_not_the_balancers(cluster, tmp_path):
    """Issue 23 behind HAProxy: 40 silent connections from one host through the balancer. Each node limits that
    host's pending connections by the address the PROXY header names (8 each), drops the rest, and meanwhile a
    modality's study through the same balancer goes in; the balancer's own address is never limited."""
    attacker = "127.0.0.3"
    refusal = f"connection from {attacker} refused: pending per address limit"
    idle = []
    try:
        for _ in range(40):
            sock = socket.socket()
            sock.settimeout(5)
            sock.bind((attacker, 0))
            sock.connect(("127.0.0.1", cluster.port))
            idle.append(sock)
        for node in cluster.nodes.values():
            wait_until(lambda node=node: refusal in node.process.log(), timeout=15, what=f"{node.name} refusing")
        _, paths = synthetic_study(tmp_path / "modality", count=3)
        run = storescu(cluster.port, paths)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        for sock in idle:
            sock.close()
    received = ReceivedInstance.objects.all()
    assert received.count() == 3 and {r.peer_address for r in received} == {"127.0.0.1"}
    for node in cluster.nodes.values():
        log = node.process.log()
        assert log.count(refusal) == 1  # once a minute per address, whatever the count
        assert f"connection from {BALANCER_SOURCE} refused" not in log
