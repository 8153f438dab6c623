import argparse
import signal
import socket
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.archive import dimse
from apps.core import tls
from apps.ingest import proxy_protocol, scp, services, supervisor
from apps.ingest.storage import Spool
from apps.ops import heartbeats
from apps.pipeline.chains import commitment_reported, studies_received, study_arriving
from apps.routing.services import CommitmentReports


class Command(BaseCommand):
    help = (
        "Run the DICOM C-STORE SCP, on a plain port, a TLS port or both (SCP_PORT, SCP_TLS_PORT; 0 turns one "
        "off). SIGTERM lets open associations finish, then stops; SIGHUP reads the TLS certificate and key "
        "again. With --processes N, N SCP processes accept from the same ports, under one supervisor."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.SCP_HOST)
        parser.add_argument("--port", type=int, default=settings.SCP_PORT, help="plain TCP port; 0: none")
        parser.add_argument("--tls-port", type=int, default=settings.SCP_TLS_PORT, help="TLS port; 0: none")
        parser.add_argument("--ae-title", default=settings.SCP_AE_TITLE)
        parser.add_argument("--processes", type=int, default=settings.SCP_PROCESSES)
        # Given by the supervisor to the processes it starts: which one this is, and the socket to accept from.
        parser.add_argument("--process-number", type=int, default=0, help=argparse.SUPPRESS)
        parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
        parser.add_argument("--tls-listen-fd", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args, host, port, tls_port, ae_title, processes, process_number, **options) -> None:
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if not port and not tls_port:
            raise CommandError("nothing to listen on: the plain and the TLS port are both 0 (SCP_PORT, SCP_TLS_PORT)")
        server_tls = _server_tls() if tls_port else None  # a bad certificate or key stops us here, clearly
        _proxy_balancers()  # so is a PROXY protocol without its balancers, before any process starts
        if processes > 1 and options["listen_fd"] is None and options["tls_listen_fd"] is None:
            listeners = {}
            for kind, number in (("plain", port), ("tls", tls_port)):
                if not number:
                    continue
                try:
                    listeners[kind] = supervisor.listen(host, number)
                except OSError as exc:
                    for opened in listeners.values():
                        opened.close()
                    raise CommandError(f"cannot listen on {host}:{number}: {exc}") from exc
            if supervisor.run(listeners=listeners, host=host, ae_title=ae_title, processes=processes, out=self.stdout):
                raise CommandError("an SCP process kept failing to start, or did not stop: see the log above")
            return
        self._serve(host, port, tls_port, server_tls, ae_title, process_number, options)

    def _serve(self, host, port, tls_port, server_tls, ae_title, process_number, options) -> None:
        stop = supervisor.StopSignals()
        if server_tls is not None:
            signal.signal(signal.SIGHUP, lambda *_: server_tls.reload())
        listeners = []
        if port:
            listeners.append(scp.Listener(port, fd=options["listen_fd"], proxy=_proxy_balancers()))
        if tls_port:
            listeners.append(scp.Listener(tls_port, tls=server_tls, fd=options["tls_listen_fd"]))
        stopping = threading.Event()  # for the heartbeat thread; set by this thread, never in a signal handler
        spool = Spool(settings.STORAGE_ROOT)
        spool.sweep()  # temp files an SCP killed mid-write left behind (never acknowledged to a sender)
        servers = scp.serve(
            host=host,
            listeners=listeners,
            ae_title=ae_title,
            spool=spool,
            on_studies_received=studies_received,
            on_study_started=study_arriving,
            extra_services=(*_query_retrieve(ae_title), CommitmentReports(on_reported=commitment_reported)),
            limits=scp.Limits(
                max_associations=settings.SCP_MAX_ASSOCIATIONS,
                max_pdu=settings.SCP_MAX_PDU,
                max_associate_pdu=settings.SCP_MAX_ASSOCIATE_PDU,
                acse_timeout=settings.SCP_ACSE_TIMEOUT,
                idle_timeout=settings.SCP_IDLE_TIMEOUT,
                max_pending=settings.SCP_MAX_PENDING,
                max_pending_per_address=settings.SCP_MAX_PENDING_PER_ADDRESS,
                max_associations_per_address=settings.SCP_MAX_ASSOCIATIONS_PER_ADDRESS,
                negotiation_timeout=settings.SCP_NEGOTIATION_TIMEOUT,
                connection_rate_per_address=settings.SCP_CONNECTION_RATE_PER_ADDRESS,
                association_pace_per_address=settings.SCP_ASSOCIATION_PACE_PER_ADDRESS,
            ),
        )
        ports = [server.server_address[1] for server in servers]
        port = ports[0]
        which, suffix = (f" (process {process_number})", f"/{process_number}") if process_number else ("", "")
        addresses = ", ".join(
            f"{host}:{number}{' (TLS)' if listener.tls else ''}"
            for number, listener in zip(ports, listeners, strict=True)
        )
        self.stdout.write(f"SCP {ae_title} listening on {addresses}{which}", ending="\n")
        entrance = servers[0].entrance
        heartbeats.start(
            "scp",
            f"{socket.gethostname()}:{port}{suffix}",
            stop=stopping,
            counters=lambda: {"refused": entrance.refusals(), "paced": entrance.paced_total()},
            # An allow-list entry's own association figure reaches the door here too: a host held at its
            # limit is rejected before its association reads the list (scp.StoreSCP.on_acse_recv).
            each=lambda: entrance.own_figures(services.association_figures(services.allowed_callers())),
        )
        self.stdout.flush()
        stop.wait()
        stopping.set()
        self.stdout.write(f"SCP{which} stopping: finishing open associations")
        aborted = scp.stop(servers, grace=settings.SCP_SHUTDOWN_GRACE)
        self.stdout.write(f"SCP{which} stopped ({aborted} associations aborted)")


def _query_retrieve(ae_title: str) -> tuple:
    """C-FIND, C-MOVE and C-GET on the same ports (docs/query-retrieve.md), unless QR_ENABLED is off."""
    if not settings.QR_ENABLED:
        return ()
    dimse.install()
    return (dimse.QueryRetrieve(ae_title=ae_title),)


def _proxy_balancers() -> proxy_protocol.Balancers | None:
    """SCP_PROXY_PROTOCOL: the load balancers (SCP_PROXY_FROM) whose connections carry a PROXY header."""
    if not settings.SCP_PROXY_PROTOCOL:
        return None
    try:
        balancers = proxy_protocol.Balancers.parse(settings.SCP_PROXY_FROM)
    except ValueError as exc:
        raise CommandError(f"SCP_PROXY_FROM: {exc}") from exc
    if not balancers.networks:
        raise CommandError("SCP_PROXY_PROTOCOL needs SCP_PROXY_FROM: the load balancers' addresses (docs/scale-out.md)")
    return balancers


def _server_tls() -> tls.Reloading:
    cert, key, ca = settings.SCP_TLS_CERT, settings.SCP_TLS_KEY, settings.SCP_TLS_CA
    if not cert or not key:
        raise CommandError("a TLS port needs SCP_TLS_CERT and SCP_TLS_KEY (PEM files; docs/security.md)")
    try:
        return tls.Reloading(
            lambda: tls.server_context(cert=cert, key=key, ca=ca), files=tuple(f for f in (cert, key, ca) if f)
        )
    except tls.TlsFileError as exc:
        raise CommandError(f"cannot use the TLS files: {exc}") from exc
