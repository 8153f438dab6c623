"""The C-STORE SCP: a pynetdicom AE with handlers bound to their dependencies.

Handlers do the minimum: parse the event, call one service, return a status. Each association runs
in its own thread. A study is handed to the pipeline as soon as the association moves on to another
study, and whatever is left when the association ends (released or aborted: instances already answered
with success are ours either way). A sender that comes back to a study already handed over in the same
association is rare; its later instances take the late-instance path (a second chain, the same
destinations and reader). Datasets arrive straight into temp files of the spool (streaming.py): the
C-STORE handler inspects the file and renames it into place.
"""

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DatabaseError, close_old_connections, connection
from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from apps.core.tls import Reloading, peer_certificate

from . import door, guard, proxy_protocol, reactor, services, streaming
from .storage import Spool

logger = logging.getLogger(__name__)

# Stored and forwarded byte for byte: we accept the common encodings and never transcode.
# Deflate is left out on purpose: a small deflated dataset can inflate to gigabytes.
TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
]

# Put in place of the calling title of a caller refused for its host; never admitted (see below).
_DENIED = "DENIED BY HOST"

# Study Instance UID -> the (keyword, value) pairs that say how urgent it is.
StudiesReceived = Callable[[dict[str, set[tuple[str, str]]]], None]
# A study's first instance in an association is stored: (its UID, what it said of its urgency).
StudyStarted = Callable[[str, set[tuple[str, str]]], None]
# A sender could vary descriptions per instance; a study's urgency needs only a few of them.
MAX_URGENCY_VALUES = 64
# The allow-list is read again for an association when the last read is older than this: a change to it
# applies to associations requested this long after it, at most.
ALLOW_LIST_SECONDS = 0.25


@dataclass(frozen=True)
class Limits:
    """What peers may take of the SCP (settings.SCP_*; see docs/configuration.md)."""

    max_associations: int = 16  # established associations (the door's; door.py)
    max_pdu: int = 131072  # advertised; a P-DATA-TF declaring more is refused before it is read
    max_associate_pdu: int = 65536  # any other PDU
    acse_timeout: float = 30  # to negotiate, and to send any one PDU before the association
    idle_timeout: float = 120  # silence, and time to send any one PDU, once associated
    max_pending: int = 64  # connections not associated yet
    max_pending_per_address: int = 8
    max_associations_per_address: int = 8
    negotiation_timeout: float = 5  # from the connect to the whole A-ASSOCIATE-RQ (TLS handshake included)
    connection_rate_per_address: float = 0  # new connections a second from one address; 0: no limit
    association_pace_per_address: float = 25  # associations a second from one address while others are served

    def door_limits(self) -> door.DoorLimits:
        return door.DoorLimits(
            pending=self.max_pending,
            pending_per_address=self.max_pending_per_address,
            associations=self.max_associations,
            associations_per_address=self.max_associations_per_address,
            negotiation_timeout=self.negotiation_timeout,
            rate_per_address=self.connection_rate_per_address,
            pace_per_address=self.association_pace_per_address,
        )


def _dataset_status(outcome: services.Outcome) -> Dataset | int:
    if not outcome.comment:
        return outcome.status
    status = Dataset()
    status.Status = outcome.status
    status.ErrorComment = outcome.comment[:64]
    return status


class StoreSCP:
    def __init__(
        self,
        *,
        ae_title: str,
        spool: Spool,
        on_studies_received: StudiesReceived,
        pdu_limits: guard.PduLimits,
        on_study_started: StudyStarted | None = None,
        entrance: door.Door | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.entrance = entrance
        self.spool = spool
        self.on_studies_received = on_studies_received
        self.on_study_started = on_study_started
        self.pdu_limits = pdu_limits
        self.streams = streaming.Streams(spool)
        # Per association: each study received and what its instances said of its urgency.
        self._studies: dict[int, dict[str, set[tuple[str, str]]]] = {}
        self._current: dict[int, str] = {}  # per association: the study of its last instance
        self._lock = threading.Lock()
        self._allow_list: list[services.Caller] = []
        self._allow_list_at = -ALLOW_LIST_SECONDS
        self._allow_list_lock = threading.Lock()

    def handlers(self) -> list:
        return [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_DIMSE_RECV, guard.refuse_invalid_request),
            (evt.EVT_ACSE_RECV, self.on_acse_recv),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_end),
            (evt.EVT_ABORTED, self.on_end),
        ]

    def on_conn_open(self, event) -> None:
        # Without TCP_NODELAY every response waits ~40 ms on Nagle and delayed ACKs.
        with contextlib.suppress(OSError, AttributeError):
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc = event.assoc
        ticket = self.entrance.ticket(assoc.dul.socket.socket if assoc.dul.socket else None) if self.entrance else None
        guard.install(assoc, self.pdu_limits, self.entrance, ticket)
        close_wakeups = reactor.install(assoc)
        self.streams.watch(assoc)
        done = (lambda: self.entrance.closed(ticket)) if self.entrance else (lambda: None)
        _when_thread_ends(assoc, lambda: self.streams.end(assoc), close_wakeups, done)

    def on_acse_recv(self, event) -> None:
        """Admission: the calling AE title must be allowed from this host, and over TLS with the client
        certificate its entry asks for.

        pynetdicom checks only titles (require_calling_aet). For a title that is listed but comes from
        another host, or without its TLS terms, we replace the title in the request with one no list holds,
        so pynetdicom rejects the association the standard way: permanent, calling AE title not recognised
        (1, 1, 3).
        """
        primitive = event.primitive
        if not isinstance(primitive, A_ASSOCIATE) or primitive.result is not None:
            return
        allow_list = self._allow_list_read()
        titles = sorted({c.ae_title for c in allow_list} - {_DENIED})
        event.assoc.ae.require_calling_aet = titles
        peer = peer_of(event.assoc)
        title = str(primitive.calling_ae_title or "")
        try:
            allowed = services.caller_allowed(allow_list, ae_title=title, peer=peer)
        except Exception as exc:  # noqa: BLE001 - pynetdicom would log it and admit the caller: refuse instead
            logger.error("association from %s refused: its admission check failed (%s)", peer.host, type(exc).__name__)
            allowed = False
        if not allowed:
            over = "TLS" if peer.tls else "plain TCP"
            logger.warning(
                "association from %s at %s over %s refused: not on the allow-list", title.strip(), peer.host, over
            )
            primitive.calling_ae_title = _DENIED

    def _allow_list_read(self) -> list:
        """The allow-list, read at most every ALLOW_LIST_SECONDS for the whole process. Reading it for each
        association cost a database connection per association thread: under a flood of short associations
        a fifth of the SCP's CPU (py-spy), besides the database's own work for each connection."""
        with self._allow_list_lock:
            if time.monotonic() - self._allow_list_at < ALLOW_LIST_SECONDS:
                return self._allow_list
            close_old_connections()
            try:
                self._allow_list = services.allowed_callers()
                self._allow_list_at = time.monotonic()
                if self.entrance is not None:
                    self.entrance.own_figures(services.association_figures(self._allow_list))
            except DatabaseError:
                # Keep the last list we read: the C-STORE will answer 0xA700 while the database is away.
                connection.close()
            return self._allow_list

    def on_echo(self, event) -> int:
        return 0x0000

    def on_store(self, event) -> Dataset | int:
        request = event.request
        assoc = event.assoc
        received = self.streams.take(assoc, event.dataset_path)
        try:
            outcome = services.instance_receive(
                spool=self.spool,
                received=received,
                transfer_syntax=event.context.transfer_syntax,
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                origin=services.Origin(
                    calling_ae_title=assoc.requestor.ae_title.strip(),
                    called_ae_title=assoc.acceptor.ae_title.strip(),
                    peer_address=assoc.requestor.address,
                ),
            )
        finally:
            if received is not None:
                received.discard()
        if outcome.status == services.SUCCESS:
            uid = outcome.study_instance_uid
            with self._lock:
                studies = self._studies.setdefault(id(assoc), {})
                previous = self._current.get(id(assoc))
                self._current[id(assoc)] = uid
                done = {previous: studies.pop(previous)} if previous != uid and previous in studies else {}
                started = uid not in studies
                urgency = studies.setdefault(uid, set())
                if len(urgency) < MAX_URGENCY_VALUES:
                    urgency.update(outcome.urgency)
            if done:  # the association moved on: the previous study's pipeline need not wait for its end
                self._hand_over(done)
            if started and self.on_study_started is not None:
                self._started(uid, set(urgency))
        return _dataset_status(outcome)

    def on_end(self, event) -> None:
        with self._lock:
            studies = self._studies.pop(id(event.assoc), {})
            self._current.pop(id(event.assoc), None)
        try:
            if studies:
                self._hand_over(studies)
        finally:
            connection.close()

    def _started(self, uid: str, urgency: set[tuple[str, str]]) -> None:
        try:
            self.on_study_started(uid, urgency)
        except Exception:  # noqa: BLE001 - never fail a C-STORE for it: the study goes after QC as any
            logger.exception("telling the pipeline a study started failed; it will be forwarded after QC")

    def _hand_over(self, studies: dict[str, set[tuple[str, str]]]) -> None:
        try:
            self.on_studies_received(studies)
        except Exception:  # noqa: BLE001 - never fail a C-STORE for it: the instances are recorded
            logger.exception("handing %d studies to the pipeline failed; the reconciler will start them", len(studies))


def peer_of(assoc) -> services.Peer:
    """Who is at the other end of `assoc`: its address, and over TLS the certificate it showed."""
    raw = assoc.dul.socket.socket if assoc.dul.socket else None
    tls = isinstance(raw, ssl.SSLSocket)
    return services.Peer(host=assoc.requestor.address, tls=tls, certificate=peer_certificate(raw))


def _when_thread_ends(assoc, *callbacks: Callable[[], None]) -> None:
    """Run `callbacks` in the association's own thread when its `run` returns, however the association
    ended. Call before the thread starts (EVT_CONN_OPEN)."""
    run = assoc.run

    def run_then_callbacks() -> None:
        try:
            run()
        finally:
            for callback in callbacks:
                callback()

    assoc.run = run_then_callbacks


def build_ae(*, ae_title: str, limits: Limits) -> AE:
    ae = AE(ae_title=ae_title)
    # pynetdicom counts every acceptor thread, pending connections included: the door (door.py) keeps
    # both bounds, so pynetdicom's own (a rejection as transient, local limit exceeded) is never reached.
    ae.maximum_associations = limits.max_associations + limits.max_pending
    ae.maximum_pdu_size = limits.max_pdu
    # Before association: time to send the A-ASSOCIATE-RQ (pynetdicom's ARTIM and its wait for the request),
    # within the negotiation deadline: a peer that connects and says nothing never wakes the guard, and
    # pynetdicom's wait is what ends it.
    ae.acse_timeout = min(limits.acse_timeout, limits.negotiation_timeout)
    # After: an association silent this long is aborted.
    ae.network_timeout = limits.idle_timeout
    ae.dimse_timeout = 60  # only for requests of our own: a storage SCP sends none
    ae.require_called_aet = False
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        # The roles a C-GET's caller proposes (it stores what we send back) are accepted; a storage SCU
        # proposing none keeps the default roles.
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


@dataclass(frozen=True)
class Listener:
    """A port the SCP accepts on: plain TCP, or TLS with the context `tls` gives (rebuilt when its files
    change). `fd`: the listening socket the supervisor made (runscp --processes), shared with the other
    SCP processes; whichever is free first takes a connection. `proxy`: the load balancers whose
    connections start with a PROXY header (plain listeners only; proxy_protocol.py)."""

    port: int
    tls: Reloading | None = None
    fd: int | None = None
    proxy: proxy_protocol.Balancers | None = None


class SharedContexts(list):
    """The SCP's supported presentation contexts, shared by its associations instead of copied for each.

    pynetdicom 3.0.4 deep-copies them for every connection (`RequestHandler._create_association`): ~130
    storage SOP classes with their transfer syntaxes, every UID validated again, 54 % of the SCP's CPU
    under a flood of short associations (py-spy): an association cost ~15 ms of CPU with the copy, ~4 ms
    without. Negotiation only reads them (`negotiate_as_acceptor` builds new contexts for its answer) and
    nothing of ours changes them once the server runs, so one list serves every association.
    apps.core.internals checks the version."""

    def __deepcopy__(self, memo) -> "SharedContexts":
        return self


class _Server(ThreadedAssociationServer):
    """pynetdicom's server, with TLS hands shaken in the association's own thread instead of the acceptor's.

    pynetdicom 3.0.4 wraps an accepted socket with `do_handshake_on_connect` in `get_request`, in the one
    thread that accepts every connection: a peer that connects to the TLS port and says nothing would hold
    the door for everyone. Here the socket is wrapped without shaking hands; the PDU guard shakes them
    before it reads the first PDU, within the ACSE timeout (guard.py).

    The same holds for the PROXY header of a load balancer: here a connection from one is only marked, and
    the guard reads its header in the association's thread."""

    tls: Reloading | None = None
    proxy: proxy_protocol.Balancers | None = None
    entrance: door.Door | None = None
    # socketserver's default is 5: a burst of connections (an attacker's) would fill the kernel's queue and
    # make a modality's connect wait for SYN retransmissions. The door refuses at once what it must.
    request_queue_size = 512

    def verify_request(self, request, client_address) -> bool:
        """The door, in the acceptor thread: a connection over the pending limits is closed before any
        thread is started for it (socketserver closes what this refuses)."""
        if self.entrance is None:
            return True
        host = client_address[0]
        balancer = self.proxy is not None and self.proxy.speaks_for(host)
        return self.entrance.admit(request, host, limited=not balancer)

    def get_request(self):
        client, address = self.socket.accept()
        if self.tls is not None:
            client = self.tls.context().wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        elif self.proxy is not None and self.proxy.speaks_for(address[0]):
            client = proxy_protocol.Pending.take(client)
        return client, address


class _InheritedSocketServer(_Server):
    """Accepts from a listening socket the supervisor made (runscp --processes). The socket is non-blocking
    here, so a process that lost the race for a connection goes back to its wait instead of blocking in
    accept."""

    listen_fd = -1

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = socket.socket(fileno=self.listen_fd)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already


def serve(
    *,
    host: str,
    listeners: list[Listener],
    ae_title: str,
    spool: Spool,
    on_studies_received: StudiesReceived,
    limits: Limits = Limits(),
    extra_services: tuple = (),
    on_study_started: StudyStarted | None = None,
) -> list[ThreadedAssociationServer]:
    """Start listening and return the servers, one per listener (non-blocking); `stop()` ends them. Every
    listener serves the same AE: the same handlers, admission, custody and association limit.

    `extra_services`: more DIMSE services on the same AE (query/retrieve), each with `configure(ae)` to add its
    presentation contexts and `handlers()` to bind its events; ingest knows nothing else of them."""
    pdu_limits = guard.PduLimits(
        max_pdu=limits.max_pdu,
        max_associate_pdu=limits.max_associate_pdu,
        negotiation_timeout=limits.negotiation_timeout,
    )
    entrance = door.Door(limits.door_limits())
    streaming.install()
    ae = build_ae(ae_title=ae_title, limits=limits)
    for service in extra_services:
        service.configure(ae)
    scp = StoreSCP(
        ae_title=ae_title,
        spool=spool,
        on_studies_received=on_studies_received,
        pdu_limits=pdu_limits,
        on_study_started=on_study_started,
        entrance=entrance,
    )
    handlers = scp.handlers() + [h for service in extra_services for h in service.handlers()]
    servers = []
    for listener in listeners:
        if listener.tls is not None and listener.proxy is not None:
            raise ValueError("the PROXY protocol is for plain listeners only")
        attributes = {"tls": listener.tls, "proxy": listener.proxy, "entrance": entrance}
        base = _Server
        if listener.fd is not None:
            base, attributes["listen_fd"] = _InheritedSocketServer, listener.fd
        server_class = type(base.__name__.lstrip("_"), (base,), attributes)
        # ae.start_server(block=False) with our server class: pynetdicom's make_server takes one.
        server = ae.make_server((host, listener.port), evt_handlers=handlers, server_class=server_class)
        server.contexts = SharedContexts(server.contexts)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{port}", daemon=True).start()
        ae._servers.append(server)  # as start_server does: ae.shutdown() stops it
        kind = "TLS" if listener.tls else "plain TCP" + (", PROXY protocol" if listener.proxy else "")
        logger.info("SCP %s listening on %s:%s (%s)", ae_title, host, port, kind)
        servers.append(server)
    return servers


def stop(servers: list[ThreadedAssociationServer], *, grace: float) -> int:
    """Stop accepting, let established associations finish for up to `grace` seconds, abort the rest.

    A connection that never completed association negotiation (a port probe, a slow or hostile
    client) holds nothing of ours and is aborted at once. Returns how many associations were aborted.
    """
    for server in servers:
        server.shutdown()
    if not servers:
        return 0
    ae = servers[0].ae
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(a.is_alive() and a.is_established for a in ae.active_associations):
        time.sleep(0.05)
    left = [a for a in ae.active_associations if a.is_alive()]
    for assoc in left:
        assoc.abort()
    return sum(1 for a in left if a.is_established)
