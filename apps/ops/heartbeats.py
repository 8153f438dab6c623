"""Background heartbeats: each SCP and worker process reports every HEARTBEAT_INTERVAL seconds."""

import logging
import socket
import threading

from celery.signals import worker_ready, worker_shutdown
from django.db import DatabaseError, connection

from .services import heartbeat

logger = logging.getLogger(__name__)
HEARTBEAT_INTERVAL = 30.0
_stop = threading.Event()


def start(role: str, name: str, stop: threading.Event | None = None) -> threading.Thread:
    """Report now and then every interval until `stop` is set; a database outage only skips beats."""
    stop = stop or _stop

    def run() -> None:
        while True:
            try:
                heartbeat(role=role, name=name)
            except DatabaseError as exc:
                logger.warning("heartbeat of %s %s skipped: %s", role, name, type(exc).__name__)
            finally:
                connection.close()
            if stop.wait(HEARTBEAT_INTERVAL):
                return

    thread = threading.Thread(target=run, name=f"heartbeat-{role}", daemon=True)
    thread.start()
    return thread


@worker_ready.connect
def _worker_ready(sender=None, **kwargs) -> None:
    start("worker", getattr(sender, "hostname", None) or socket.gethostname())


@worker_shutdown.connect
def _worker_shutdown(**kwargs) -> None:
    _stop.set()
