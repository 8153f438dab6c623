import argparse
import socket
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.ingest import scp, supervisor
from apps.ingest.storage import Spool
from apps.ops import heartbeats
from apps.pipeline.chains import studies_received


class Command(BaseCommand):
    help = (
        "Run the DICOM C-STORE SCP. SIGTERM lets open associations finish, then stops. With --processes N, "
        "N SCP processes accept from the one port (each association is served by one), under one supervisor."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.SCP_HOST)
        parser.add_argument("--port", type=int, default=settings.SCP_PORT)
        parser.add_argument("--ae-title", default=settings.SCP_AE_TITLE)
        parser.add_argument("--processes", type=int, default=settings.SCP_PROCESSES)
        # Given by the supervisor to the processes it starts: which one this is, and the socket to accept from.
        parser.add_argument("--process-number", type=int, default=0, help=argparse.SUPPRESS)
        parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args, host, port, ae_title, processes, process_number, listen_fd, **options) -> None:
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if processes > 1 and listen_fd is None:
            try:
                listener = supervisor.listen(host, port)
            except OSError as exc:
                raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
            if supervisor.run(listener=listener, host=host, ae_title=ae_title, processes=processes, out=self.stdout):
                raise CommandError("an SCP process kept failing to start, or did not stop: see the log above")
            return
        stop = supervisor.StopSignals()
        stopping = threading.Event()  # for the heartbeat thread; set by this thread, never in a signal handler
        spool = Spool(settings.STORAGE_ROOT)
        spool.sweep()  # temp files an SCP killed mid-write left behind (never acknowledged to a sender)
        server = scp.serve(
            host=host,
            port=port,
            ae_title=ae_title,
            spool=spool,
            on_studies_received=studies_received,
            limits=scp.Limits(
                max_associations=settings.SCP_MAX_ASSOCIATIONS,
                max_pdu=settings.SCP_MAX_PDU,
                max_associate_pdu=settings.SCP_MAX_ASSOCIATE_PDU,
                acse_timeout=settings.SCP_ACSE_TIMEOUT,
                idle_timeout=settings.SCP_IDLE_TIMEOUT,
            ),
            listen_fd=listen_fd,
        )
        port = server.server_address[1]
        which, suffix = (f" (process {process_number})", f"/{process_number}") if process_number else ("", "")
        self.stdout.write(f"SCP {ae_title} listening on {host}:{port}{which}", ending="\n")
        heartbeats.start("scp", f"{socket.gethostname()}:{port}{suffix}", stop=stopping)
        self.stdout.flush()
        stop.wait()
        stopping.set()
        self.stdout.write(f"SCP{which} stopping: finishing open associations")
        aborted = scp.stop(server, grace=settings.SCP_SHUTDOWN_GRACE)
        self.stdout.write(f"SCP{which} stopped ({aborted} associations aborted)")
