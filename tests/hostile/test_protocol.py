"""Hostile peers at the protocol level, against runscp as a real process: PDUs that declare more than we
advertised, connections that stall, and more associations than allowed."""

import select
import socket
import time
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from apps.ingest import guard

from ..support.dicom import shipped, storescu
from ..support.processes import wait_until
from . import ABORT, ASSOCIATE_AC, Aborted, RawAssociation, associate_rq, pdu_header, read_pdu

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

HUGE = 0xFFFFFFF0
STREAMED = 64 * 1024 * 1024  # what the attacker sends after the header, if we let it


def wait_for_close(sock: socket.socket, timeout: float) -> tuple[float, bytes]:
    """Read until the peer closes (EOF or reset); returns (seconds waited, what arrived). Bounded."""
    start = time.monotonic()
    sock.settimeout(0.2)
    received = b""
    while time.monotonic() - start < timeout:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError(f"the SCP kept the connection open for {timeout} s")
    return time.monotonic() - start, received


def stream(sock: socket.socket, total: int, timeout: float = 10) -> int:
    """Send up to `total` zero bytes; stop when the peer stops reading or closes. Returns bytes sent."""
    sock.settimeout(1)
    chunk = b"\0" * 65536
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        while sent < total and time.monotonic() < deadline:
            sent += sock.send(chunk)
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass
    return sent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def echo(port: int) -> int:
    with RawAssociation(port, [(Verification, ImplicitVRLittleEndian)]) as assoc:
        status = int(assoc.echo().Status)
        assoc.release()
    return status


def attack(port: int, *, before: bytes, pdu_type: int) -> tuple[float, bytes, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if before:
            sock.sendall(before)
            assert read_pdu(sock)[0] == ASSOCIATE_AC
        start = time.monotonic()
        sock.sendall(pdu_header(pdu_type, HUGE))
        sent = stream(sock, STREAMED)
        _, received = wait_for_close(sock, timeout=10)
        return time.monotonic() - start, received, sent


@pytest.mark.parametrize(
    ("before", "pdu_type"),
    [(associate_rq(), 0x04), (b"", 0x01)],
    ids=["p-data-tf-after-association", "a-associate-rq"],
)
def test_a_pdu_declaring_4_gib_is_aborted_without_reading_it(start_scp, before, pdu_type, record_property):
    proc, port = start_scp()
    assert echo(port) == 0  # warm up: the first association loads what the SCP needs
    baseline = rss_kb(proc.pid)
    elapsed, received, sent = attack(port, before=before, pdu_type=pdu_type)
    grown = rss_kb(proc.pid) - baseline
    record_property("close_seconds", round(elapsed, 3))
    record_property("rss_kb", (baseline, grown))
    print(f"closed after {elapsed:.3f} s; {sent} bytes streamed; RSS {baseline} kB, +{grown} kB")
    assert elapsed < 5
    assert received[:1] == bytes([ABORT])  # A-ABORT before the close
    assert grown < 16 * 1024
    assert proc.alive()
    assert echo(port) == 0
    assert storescu(port, [shipped("ct")]).returncode == 0


ACSE_TIMEOUT = 2.0
IDLE_TIMEOUT = 3.0
MARGIN = 3.0


@pytest.fixture
def short_timeouts(service_env) -> dict:
    return {**service_env, "SCP_ACSE_TIMEOUT": str(ACSE_TIMEOUT), "SCP_IDLE_TIMEOUT": str(IDLE_TIMEOUT)}


@pytest.mark.parametrize("sent", [b"", b"\x01\x00\x00"], ids=["nothing", "half-a-header"])
def test_a_connection_that_never_associates_is_closed_after_the_acse_timeout(
    start_scp, short_timeouts, sent, record_property
):
    _, port = start_scp(short_timeouts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(sent)
        elapsed, _ = wait_for_close(sock, timeout=ACSE_TIMEOUT + MARGIN)
    record_property("close_seconds", round(elapsed, 3))
    print(f"closed after {elapsed:.3f} s")
    assert elapsed >= ACSE_TIMEOUT - 0.5
    assert echo(port) == 0


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
def test_a_pdu_left_half_sent_is_aborted_after_the_idle_timeout(start_scp, short_timeouts, trickle, record_property):
    """pynetdicom alone waits for the rest of a PDU for ever (its timers are checked between PDUs)."""
    _, port = start_scp(short_timeouts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == ASSOCIATE_AC
        start = time.monotonic()
        sock.sendall(pdu_header(0x04, 100) + b"\0" * 10)
        # One byte every half second, never the whole PDU, until the SCP answers (an A-ABORT) or closes.
        while trickle and not select.select([sock], [], [], 0.5)[0]:
            sock.sendall(b"\0")
        _, received = wait_for_close(sock, timeout=IDLE_TIMEOUT + MARGIN)
        elapsed = time.monotonic() - start
    record_property("close_seconds", round(elapsed, 3))
    print(f"closed after {elapsed:.3f} s")
    assert IDLE_TIMEOUT - 0.5 <= elapsed <= IDLE_TIMEOUT + MARGIN
    assert echo(port) == 0


def test_an_idle_association_is_aborted_after_the_idle_timeout(start_scp, short_timeouts, record_property):
    _, port = start_scp(short_timeouts)
    with RawAssociation(port, [(Verification, ImplicitVRLittleEndian)], timeout=IDLE_TIMEOUT + MARGIN) as assoc:
        assert int(assoc.echo().Status) == 0
        start = time.monotonic()
        pdu_type, _ = read_pdu(assoc.sock)
        elapsed = time.monotonic() - start
    record_property("abort_seconds", round(elapsed, 3))
    print(f"aborted after {elapsed:.3f} s")
    assert pdu_type == ABORT
    assert IDLE_TIMEOUT - 0.5 <= elapsed <= IDLE_TIMEOUT + MARGIN


def test_associations_beyond_the_limit_are_rejected_as_transient(start_scp, service_env):
    _, port = start_scp({**service_env, "SCP_MAX_ASSOCIATIONS": "2"})
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    held = [ae.associate("127.0.0.1", port, ae_title="ROUTER") for _ in range(2)]
    assert all(assoc.is_established for assoc in held)
    third = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert third.is_rejected
    rejection = third.acceptor.primitive
    # rejected-transient, service provider (presentation related), local limit exceeded
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x02, 0x03, 0x02)
    held.pop().release()

    def admitted():
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        if assoc.is_established:
            held.append(assoc)
        return assoc.is_established

    wait_until(admitted, timeout=5, interval=0.2, what="a new association after one was released")
    for assoc in held:
        assoc.release()


def test_stalled_connections_do_not_hold_the_association_slots(start_scp, service_env):
    """Before the guard, a connection stalled inside a PDU header held its slot (and two threads) for ever."""
    env = {**service_env, "SCP_MAX_ASSOCIATIONS": "2", "SCP_ACSE_TIMEOUT": str(ACSE_TIMEOUT)}
    _, port = start_scp(env)
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        for sock in stalled:
            sock.sendall(b"\x01\x00")
        time.sleep(ACSE_TIMEOUT + 1)
        assert echo(port) == 0
    finally:
        for sock in stalled:
            sock.close()


def test_port_checks_and_garbage_give_their_slot_back_at_once(start_scp, service_env):
    """A load balancer's port check (connect, close) or an HTTP request held a slot for the ACSE timeout."""
    _, port = start_scp({**service_env, "SCP_MAX_ASSOCIATIONS": "2"})
    for _ in range(5):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: router\r\n\r\n")
        elapsed, received = wait_for_close(sock, timeout=2)
    assert received[:1] == bytes([ABORT])
    time.sleep(0.2)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    held = [ae.associate("127.0.0.1", port, ae_title="ROUTER") for _ in range(2)]
    assert all(assoc.is_established for assoc in held)
    for assoc in held:
        assoc.release()


@pytest.mark.parametrize("sop_instance", ["", " "], ids=["empty", "blank"])
def test_a_request_missing_a_mandatory_element_is_aborted_not_ignored(start_scp, sop_instance):
    """pynetdicom drops it silently: the sender waited for its DIMSE timeout, the association for ours."""
    _, port = start_scp()
    start = time.monotonic()
    with RawAssociation(port, [(CTImageStorage, ImplicitVRLittleEndian)], timeout=5) as assoc, pytest.raises(Aborted):
        assoc.store(
            CTImageStorage,
            ImplicitVRLittleEndian,
            sop_class=CTImageStorage,
            sop_instance=sop_instance,
            dataset=b"",
        )
    assert time.monotonic() - start < 2
    assert echo(port) == 0


def test_pdu_bounds_follow_the_advertised_maximum():
    limits = guard.PduLimits(max_pdu=131072, max_associate_pdu=65536)
    assert limits.bound(0x04) == 131072 + guard.HEADER_ALLOWANCE
    assert limits.bound(0x01) == 65536
    with pytest.raises(ValueError):
        guard.PduLimits(max_pdu=0, max_associate_pdu=65536)  # pynetdicom's "unlimited"
