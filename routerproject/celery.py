"""The Celery app: queues, routes and the Beat schedule. Other settings are CELERY_* in settings."""

import logging.config
import os
from pathlib import Path

from celery import Celery, signals
from kombu import Queue

from . import broker  # noqa: F401  (registers the embedded routerfs:// transport)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerproject.settings")

app = Celery("router")
app.config_from_object("django.conf:settings", namespace="CELERY")

# One queue per kind of work, so a backlog of one never delays another (STAT gets its own).
QUEUES = ("ingest", "workflow", "deliver", "notify", "stat")
app.conf.task_queues = [Queue(name) for name in QUEUES]
app.conf.task_default_queue = "workflow"
app.conf.task_routes = {
    "pipeline.persist": {"queue": "ingest"},
    "pipeline.deliver": {"queue": "deliver"},
    "pipeline.stream_start": {"queue": "deliver"},
    "pipeline.stream": {"queue": "deliver"},
    "pipeline.commit": {"queue": "deliver"},
    # Prior fetching waits on an archive's C-FIND and C-MOVE: network work, beside the deliveries.
    "pipeline.prior_fetch": {"queue": "deliver"},
    "pipeline.notify": {"queue": "notify"},
    "pipeline.notification_send": {"queue": "notify"},
    # Escalations concern STAT studies: they share the STAT lane (a STAT study's own tasks are sent there
    # by apps.pipeline.chains when its priority is known).
    "pipeline.escalations_due": {"queue": "stat"},
    # Beat's own heartbeat rides the lane kept free, so its age measures Beat, not a routine backlog.
    "pipeline.beat_tick": {"queue": "stat"},
}


def _beat_schedule() -> dict:
    from django.conf import settings

    return {
        # Re-enqueue received instances and study stages that sat still too long (lost message,
        # killed worker, broker outage). Idempotent: a second enqueue finds the work done.
        "reconcile": {"task": "pipeline.reconcile", "schedule": settings.RECONCILE_INTERVAL},
        # Beat's heartbeat (role "beat" in /healthz and /metrics): its age says whether Beat still ticks.
        "beat-tick": {"task": "pipeline.beat_tick", "schedule": 30.0},
        # Deliveries whose next_attempt_at has come (retries longer than any countdown we allow).
        "deliveries-due": {"task": "pipeline.deliveries_due", "schedule": settings.DELIVERY_SWEEP_INTERVAL},
        # Storage commitment requests due: never sent (a lost message), to ask again, or whose report is
        # overdue (staff are told, the request is sent again; a bounded number of times, then the delivery fails).
        "commitments-due": {"task": "pipeline.commitments_due", "schedule": settings.DELIVERY_SWEEP_INTERVAL},
        # Prior fetches whose retry time has come (an archive that was unreachable), or whose start was lost.
        "prior-fetches-due": {"task": "pipeline.prior_fetches_due", "schedule": settings.DELIVERY_SWEEP_INTERVAL},
        # C-ECHO every destination: an unreachable one pauses its queue, a recovered one resumes it.
        "destinations-check": {"task": "pipeline.destinations_check", "schedule": settings.HEALTH_CHECK_INTERVAL},
        # Storage below its free-space watermark (the SCP answers 0xA700): the admins are told, once a day.
        "storage-check": {"task": "pipeline.storage_check", "schedule": settings.HEALTH_CHECK_INTERVAL},
        # Files nothing more is to be done with, once their retention passed (docs/storage.md); below the
        # emergency threshold, storage-check runs it at once, and the SCP asks for it at association end.
        "storage-purge": {"task": "pipeline.storage_purge", "schedule": settings.STORAGE_PURGE_INTERVAL},
        # Instance files no row names (an SCP killed between the file and its row): removed after 10 minutes.
        "storage-sweep": {"task": "pipeline.storage_sweep", "schedule": 3600.0},
        # STAT studies nobody acknowledged: remind, reassign, tell the supervisors (each step once, by key).
        "escalations-due": {"task": "pipeline.escalations_due", "schedule": 15.0},
        # SLA thresholds crossed (at risk, breached), recorded and notified once each.
        "sla-check": {"task": "pipeline.sla_check", "schedule": 30.0},
        # Reading privileges that expire within two weeks: the admins are warned once each.
        "privileges-expiring": {"task": "pipeline.privileges_expiring", "schedule": 3600.0},
        # TLS certificates (the SCP's, the destinations') that expire within TLS_EXPIRY_WARNING_DAYS: staff are
        # told once per certificate.
        "certificates-expiring": {"task": "pipeline.certificates_expiring", "schedule": 3600.0},
        # Studies nobody could read when they arrived: try again, someone may have come on shift.
        "assign-unassigned": {"task": "pipeline.assign_unassigned", "schedule": 60.0},
    }


@signals.setup_logging.connect
def _logging(**kwargs) -> None:
    """The worker and Beat log as Django is configured to (settings.LOGGING: plain or JSON)."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.worker_init.connect
@signals.beat_init.connect
def _system_checks(**kwargs) -> None:
    """Workers and Beat refuse to start where a system check fails, as runscp and the web server do (Celery
    runs none of Django's): a patched library part that changed, storage that cannot be written."""
    from django.core import checks

    errors = [e for e in checks.run_checks() if e.is_serious()]
    if errors:
        raise SystemExit("System check identified errors:\n" + "\n".join(str(e) for e in errors))


@app.on_after_configure.connect
def _configure(sender: Celery, **kwargs) -> None:
    sender.conf.beat_schedule = _beat_schedule()
    # kombu's filesystem transport (the embedded default) expects its folders to exist.
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        folder = (sender.conf.broker_transport_options or {}).get(key)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)


app.autodiscover_tasks(["apps.pipeline"])
