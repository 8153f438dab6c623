"""Bounds on what a peer can make the SCP read, and on how long it may hold a connection doing it.

pynetdicom 3.0.4 reads each PDU in `DULServiceProvider._read_pdu_data`: the 6-byte header, then as many
bytes as the header declares, up to 4 GiB, before looking at them, on a socket without a timeout. So a
peer can make the SCP allocate gigabytes before any admission check (one A-ASSOCIATE-RQ header is
enough), or stop in the middle of a PDU and hold the connection, its two threads and its place in the
association count for ever: pynetdicom checks its ARTIM and idle timers only between PDUs. And a
connection closed before it sent an A-ASSOCIATE-RQ (a load balancer's port check) keeps its place in
the count for the whole ACSE timeout, because the acceptor thread waits that long for a request that
can no longer come.

`install()` runs in the EVT_CONN_OPEN handler, when the association and its DUL exist but neither of
their threads has started, and replaces that one DUL's `_read_pdu_data` with `PduGuard.read`. The guard
reads and decodes a PDU as pynetdicom does (same decoder, same state-machine events), except that:

- the declared length is checked before the body is read: a P-DATA-TF may be as long as the maximum PDU
  we advertised (plus a small allowance for senders that count it loosely), any other PDU as long as
  `max_associate_pdu`; the first PDU must be an A-ASSOCIATE-RQ (PS3.8: anything else aborts);
- the whole PDU must arrive within a deadline: the ACSE timeout before the association is established,
  the network (idle) timeout after; and everything before the association (a PROXY header, the TLS
  handshake, the whole A-ASSOCIATE-RQ) within the negotiation deadline from the connect (door.py);
- a complete A-ASSOCIATE-RQ asks the door for an association slot; without one it is rejected as
  transient, local limit exceeded (2, 3, 2), as pynetdicom rejects beyond its own maximum;
- a connection that ends, or is ended, before the association was requested also ends its acceptor
  thread at once, so it gives its place back;
- on a TLS connection the handshake comes first, within the same deadline (the SCP's server leaves it to
  this thread, see scp._Server); one that fails or does not come in time ends the connection;
- on a connection from a load balancer that speaks the PROXY protocol (scp._Server marks it), its header
  comes before anything else, within PROXY_TIMEOUT, and the client it names becomes the association's
  requestor address; a connection without a valid header is dropped (proxy_protocol.py).

A PDU over its bound, unexpected or late ends the connection: an A-ABORT (source: service provider) is
sent and the socket closed, which the state machine sees as the transport connection closing (Evt17),
as if the peer had dropped it. Nothing else of pynetdicom changes, and only our SCP's associations are
guarded.
"""

import contextlib
import logging
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pynetdicom.dimse_primitives import C_CANCEL
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_P_ABORT
from pynetdicom.transport import AddressInformation

from . import door as doors
from . import proxy_protocol

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

logger = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
PDU_TYPES = range(0x01, 0x08)
# The Maximum Length we advertise bounds a P-DATA-TF's variable field; some senders add the PDV item
# headers on top of it. More than this above the maximum is refused.
HEADER_ALLOWANCE = 1024
READ_CHUNK = 1 << 20
# A-ABORT reasons when the source is the service provider (PS3.8 table 9-26).
REASON_NOT_SPECIFIED = 0x00
UNEXPECTED_PDU = 0x02
INVALID_PDU_PARAMETER_VALUE = 0x06


@dataclass(frozen=True)
class PduLimits:
    max_pdu: int  # the maximum length of a P-DATA-TF, as we advertise it
    max_associate_pdu: int  # any other PDU (in practice the A-ASSOCIATE-RQ)
    negotiation_timeout: float | None = None  # from the connect to the whole A-ASSOCIATE-RQ; None: no bound

    def __post_init__(self) -> None:
        if self.max_pdu <= 0:
            # pynetdicom reads 0 as "unlimited": we would advertise no bound, and have none to enforce.
            raise ValueError("the maximum PDU must be a positive number of bytes")

    def bound(self, pdu_type: int) -> int:
        return self.max_pdu + HEADER_ALLOWANCE if pdu_type == P_DATA_TF else self.max_associate_pdu


class _Refused(Exception):
    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class _HandshakeFailed(Exception):
    pass


class _NoProxyHeader(Exception):
    pass


class _Dropped(Exception):
    """Dropped by the door (which logged it)."""


# A-ASSOCIATE-RJ: rejected-transient, service provider (presentation related), local limit exceeded.
REJECT_LOCAL_LIMIT = struct.pack(">BBLBBBB", 0x03, 0x00, 4, 0x00, 0x02, 0x03, 0x02)


class PduGuard:
    def __init__(
        self,
        dul: "DULServiceProvider",
        limits: PduLimits,
        door: "doors.Door | None" = None,
        ticket: "doors.Ticket | None" = None,
    ) -> None:
        self.dul = dul
        self.limits = limits
        self.door, self.ticket = door, ticket
        opened = ticket.opened if ticket is not None else time.monotonic()
        self.negotiation_deadline = None if limits.negotiation_timeout is None else opened + limits.negotiation_timeout
        # Our own record, not the state machine's: the DUL may read before it has processed the
        # connection's own event (Sta1 -> Sta2).
        self.requested = False
        self.shaken = False  # the TLS handshake, on a TLS connection

    def read(self) -> None:
        """Read one PDU from the peer and queue its event, as `DULServiceProvider._read_pdu_data` does."""
        dul = self.dul
        raw = dul.socket.socket if dul.socket else None
        if raw is None:
            return
        timeout = self._timeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.requested and self.negotiation_deadline is not None:
            deadline = self.negotiation_deadline if deadline is None else min(deadline, self.negotiation_deadline)
        try:
            if isinstance(raw, proxy_protocol.Pending) and not raw.header_read:
                self._take_proxy_header(raw, deadline)
            if not self.shaken and isinstance(raw, ssl.SSLSocket):
                self._shake_hands(raw, deadline)
            header = self._receive(raw, 6, deadline)
            pdu_type, _, length = struct.unpack(">BBL", header)
            if not self.requested and pdu_type != A_ASSOCIATE_RQ:
                raise _Refused(f"PDU type 0x{pdu_type:02X} before an A-ASSOCIATE-RQ", UNEXPECTED_PDU)
            if pdu_type not in PDU_TYPES:
                logger.error("unknown PDU type 0x%02X from %s", pdu_type, self._peer())
                dul.event_queue.put("Evt19")  # unrecognised PDU: the state machine aborts
                return
            bound = self.limits.bound(pdu_type)
            if length > bound:
                raise _Refused(
                    f"PDU type 0x{pdu_type:02X} declares {length} bytes, over {bound}", INVALID_PDU_PARAMETER_VALUE
                )
            body = self._receive(raw, length, deadline)
            if not self.requested and not self._slot():
                with contextlib.suppress(OSError):
                    raw.settimeout(1)
                    raw.sendall(REJECT_LOCAL_LIMIT)
                self._end(raw, abort_reason=None)
                return
        except _Refused as refused:
            if not self._late():  # a late one is counted and logged by the door
                logger.warning("connection from %s aborted: %s", self._peer(), refused)
            self._end(raw, abort_reason=refused.reason)
            return
        except _Dropped:
            self._end(raw, abort_reason=None)
            return
        except _NoProxyHeader as missing:
            logger.warning("connection from the load balancer %s dropped: %s", self._peer(), missing)
            self._end(raw, abort_reason=None)  # not a DICOM peer we know: nothing to say to it
            return
        except _HandshakeFailed as failed:
            if not self._late():  # a late one is counted and logged by the door
                logger.warning("TLS connection from %s refused: %s", self._peer(), failed)
            self._end(raw, abort_reason=None)  # no A-ABORT: there is no TLS session to send it in
            return
        except (OSError, EOFError):
            self._end(raw, abort_reason=None)  # the peer closed or reset the connection
            return
        with contextlib.suppress(OSError):
            raw.settimeout(timeout)  # back from the deadline to the plain timeout, for sends
        try:
            pdu, event = dul._decode_pdu(header + body)
        except Exception:  # noqa: BLE001 - as pynetdicom: any decoding failure is an invalid PDU
            logger.exception("invalid PDU from %s", self._peer())
            if self.requested:
                dul.event_queue.put("Evt19")  # the state machine aborts
            else:
                self._end(raw, abort_reason=INVALID_PDU_PARAMETER_VALUE)
            return
        self.requested = True
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    def _slot(self) -> bool:
        """The A-ASSOCIATE-RQ is complete: an association slot from the door (no door: pynetdicom's count),
        after the request's turn when its host is paced (door.py: this thread waits, the others go on)."""
        if self.door is None or self.ticket is None:
            return True
        if wait := self.door.pace(self.ticket):
            time.sleep(wait)
        return self.door.associate(self.ticket)

    def _late(self) -> bool:
        """Past the negotiation deadline without an A-ASSOCIATE-RQ (the door counts and logs it when the
        connection's threads end)."""
        return (
            self.door is not None
            and not self.requested
            and self.negotiation_deadline is not None
            and time.monotonic() >= self.negotiation_deadline
        )

    def _timeout(self) -> float | None:
        """Before the A-ASSOCIATE-RQ: the ACSE timeout; after it, the idle timeout. By our own record of the
        request, not `assoc.is_established`: the DUL may read the first P-DATA-TF before the association's
        thread has marked the association established, and that PDU would get the (short) ACSE timeout."""
        assoc = self.dul.assoc
        return assoc.network_timeout if self.requested else assoc.acse_timeout

    def _take_proxy_header(self, raw: "proxy_protocol.Pending", deadline: float | None) -> None:
        """The PROXY header a load balancer sends first: its client becomes this association's requestor."""
        soon = time.monotonic() + proxy_protocol.PROXY_TIMEOUT
        deadline = soon if deadline is None else min(deadline, soon)
        try:
            source = proxy_protocol.read(lambda size: bytes(self._receive(raw, size, deadline)))
        except proxy_protocol.HeaderError as exc:
            raise _NoProxyHeader(str(exc)) from exc
        except _Refused as exc:
            raise _NoProxyHeader("no PROXY header in time") from exc
        raw.header_read = True
        if source.address is not None:  # else the balancer's own check: it stays the requestor
            self.dul.assoc.requestor.address_info = AddressInformation(source.address, source.port)
            if (
                self.door is not None
                and self.ticket is not None
                and not self.door.readdress(self.ticket, source.address)
            ):
                raise _Dropped

    def _shake_hands(self, raw: ssl.SSLSocket, deadline: float | None) -> None:
        """The TLS handshake, in this association's thread and within the time the first PDU has."""
        if deadline is not None:
            raw.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            raw.do_handshake()
        except ssl.SSLEOFError as exc:
            raise EOFError from exc  # closed before a word of TLS: a port check, not worth a warning
        except TimeoutError as exc:
            raise _HandshakeFailed("no TLS handshake in time") from exc
        except ssl.SSLError as exc:
            raise _HandshakeFailed(f"TLS handshake failed: {exc.reason or exc}") from exc
        self.shaken = True

    def _receive(self, raw: socket.socket, size: int, deadline: float | None) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Refused(f"{received} of {size} bytes arrived in time", REASON_NOT_SPECIFIED)
                raw.settimeout(left)
            try:
                count = raw.recv_into(view[received:], min(size - received, READ_CHUNK))
            except TimeoutError:
                continue  # the deadline check above decides
            if count == 0:
                raise EOFError
            received += count
        return buffer

    def _end(self, raw: socket.socket, *, abort_reason: int | None) -> None:
        if abort_reason is not None:
            abort = A_ABORT_RQ()
            abort.source = 0x02
            abort.reason_diagnostic = abort_reason
            with contextlib.suppress(OSError):
                raw.settimeout(1)
                raw.sendall(abort.encode())
        # Shuts the socket down, closes it and queues Evt17: the state machine ends the association (or
        # the wait for one) from any state, as when a peer drops the connection.
        self.dul.socket.close()
        if not self.requested:
            # pynetdicom's acceptor thread is waiting (ACSE timeout) for the A-ASSOCIATE-RQ, and counts
            # as an association meanwhile. Hand it an abort, marked so it negotiates nothing: it returns,
            # and this DUL thread stops with it.
            self.dul.assoc.is_aborted = True
            self.dul.to_user_queue.put(A_P_ABORT())
            self.dul.kill_dul()

    def _peer(self) -> str:
        return str(self.dul.assoc.requestor.address)


def install(
    assoc: "Association", limits: PduLimits, door: "doors.Door | None" = None, ticket: "doors.Ticket | None" = None
) -> None:
    """Guard the PDU reads of `assoc`, an acceptor whose threads have not started yet (EVT_CONN_OPEN)."""
    assoc.dul._read_pdu_data = PduGuard(assoc.dul, limits, door, ticket).read
    raw = assoc.dul.socket.socket if assoc.dul.socket else None
    if raw is not None:
        # Sends get a bound too: a peer that stops reading cannot hold a thread in send() for ever.
        raw.settimeout(assoc.acse_timeout)


def refuse_invalid_request(event) -> None:
    """EVT_DIMSE_RECV: abort on a request that lacks a mandatory command element.

    pynetdicom drops such a request (an empty Affected SOP Instance UID, say) without answering: the
    sender waits for its DIMSE timeout, and the association holds its place until the idle timeout.
    We end it the way pynetdicom ends one whose command it cannot decode: Evt19, an invalid PDU, on
    which the state machine sends an A-ABORT and the association ends (EVT_ABORTED).
    """
    message = event.message
    if not type(message).__name__.endswith("_RQ"):
        return  # a response, or nothing pynetdicom could decode (which it aborts itself)
    try:
        primitive = message.message_to_primitive()
    except Exception:  # noqa: BLE001 - pynetdicom fails the same conversion next, and aborts
        return
    if isinstance(primitive, C_CANCEL) or primitive.is_valid_request:
        return
    logger.warning(
        "%s from %s lacks a mandatory command element: association aborted",
        type(message).__name__,
        event.assoc.requestor.address,
    )
    event.assoc.dul.event_queue.put("Evt19")
