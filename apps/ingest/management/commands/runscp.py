import signal
import socket
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.ingest import scp
from apps.ingest.storage import Spool
from apps.ops import heartbeats
from apps.pipeline.chains import studies_received


class Command(BaseCommand):
    help = "Run the DICOM C-STORE SCP. SIGTERM lets open associations finish, then stops."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.SCP_HOST)
        parser.add_argument("--port", type=int, default=settings.SCP_PORT)
        parser.add_argument("--ae-title", default=settings.SCP_AE_TITLE)

    def handle(self, *args, host: str, port: int, ae_title: str, **options) -> None:
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
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
        )
        self.stdout.write(f"SCP {ae_title} listening on {host}:{server.server_address[1]}", ending="\n")
        heartbeats.start("scp", f"{socket.gethostname()}:{server.server_address[1]}", stop=stopping)
        self.stdout.flush()
        stopping.wait()
        self.stdout.write("SCP stopping: finishing open associations")
        aborted = scp.stop(server, grace=settings.SCP_SHUTDOWN_GRACE)
        self.stdout.write(f"SCP stopped ({aborted} associations aborted)")
