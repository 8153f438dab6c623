"""Background heartbeats: each SCP and worker process reports every HEARTBEAT_INTERVAL seconds."""

import logging
import socket
import threading
from collections.abc import Callable

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import DatabaseError, connection

from .services import heartbeat

logger = logging.getLogger(__name__)
_stop = threading.Event()


def start(
    role: str,
    name: str,
    stop: threading.Event | None = None,
    counters: Callable[[], dict] | None = None,
    each: Callable[[], None] | None = None,
) -> threading.Thread:
    """Report now and then every HEARTBEAT_INTERVAL seconds until `stop` is set, with the process's
    `counters()` if it keeps any, after `each()` (what the process reads from the database now and then);
    a database outage only skips beats."""
    stop = stop or _stop

    def run() -> None:
        while True:
            try:
                if each is not None:
                    each()
                heartbeat(role=role, name=name, counters=counters() if counters else None)
            except DatabaseError as exc:
                logger.warning("heartbeat of %s %s skipped: %s", role, name, type(exc).__name__)
            finally:
                connection.close()
            if stop.wait(settings.HEARTBEAT_INTERVAL):
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
