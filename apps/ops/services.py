"""Health and metrics: what an operator or a load balancer asks of the router."""

import shutil
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from kombu import Connection

from apps.core import clock

from .models import Heartbeat

# A process that has not reported for this long is considered gone.
HEARTBEAT_STALE = timedelta(seconds=90)


def heartbeat(*, role: str, name: str, now: datetime | None = None, counters: dict | None = None) -> None:
    defaults = {"last_seen": now or clock.now()}
    if counters is not None:
        defaults["counters"] = counters
    Heartbeat.objects.update_or_create(role=role, name=name, defaults=defaults)


def free_bytes() -> int | None:
    try:
        return shutil.disk_usage(settings.STORAGE_ROOT).free
    except OSError:
        return None  # missing or unreadable storage: unhealthy, said so, never a server error


def health(*, now: datetime | None = None, broker_check=None) -> tuple[bool, dict]:
    """(healthy, report): database, broker, free storage above the watermark, and a recent heartbeat from
    at least one SCP and one worker (each process is listed with its age)."""
    now = now or clock.now()
    report: dict = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        report["database"] = "ok"
    except DatabaseError as exc:
        report["database"] = f"unreachable: {type(exc).__name__}"
    report["broker"] = (broker_check or _broker_check)()
    free = free_bytes()
    report["storage"] = {
        "free_bytes": free,
        "watermark_bytes": settings.STORAGE_MIN_FREE_BYTES,
        "status": "unavailable"
        if free is None
        else ("ok" if free >= settings.STORAGE_MIN_FREE_BYTES else "below watermark"),
    }
    beats = []
    if report["database"] == "ok":
        beats = [
            {
                "role": b.role,
                "name": b.name,
                "age_seconds": round((now - b.last_seen).total_seconds(), 1),
                "ok": now - b.last_seen <= HEARTBEAT_STALE,
            }
            for b in Heartbeat.objects.order_by("role", "name")
        ]
    report["processes"] = beats
    alive = {b["role"] for b in beats if b["ok"]}
    healthy = (
        report["database"] == "ok"
        and report["broker"] == "ok"
        and report["storage"]["status"] == "ok"
        and {"scp", "worker"} <= alive
    )
    report["status"] = "ok" if healthy else "unhealthy"
    return healthy, report


def _broker_check() -> str:
    """A fresh connection each time (never the pool's), so the answer is about the broker now."""
    try:
        with Connection(
            settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS, connect_timeout=2
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker is the answer itself
        return f"unreachable: {type(exc).__name__}"
