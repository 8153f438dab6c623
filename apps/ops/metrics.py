"""Prometheus metrics, read from the database (the source of truth) at each scrape, and the broker's
queue depths when the broker is Redis.

Every process of every host writes its rows; the web process serves them all, so the metrics are computed
from rows, never kept in a process's memory. The histograms are distributions over a recent window of rows
(HISTOGRAM_WINDOW, or STAT_WINDOW for STAT acknowledgements: STAT studies are few), not counters since
start: read them with histogram_quantile() directly, never through rate() (docs/operations.md).
"""

from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db.models import Avg, Count, F, Max, Min, Q, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from apps.core import clock
from apps.reading.models import Assignment, SlaEvent
from apps.routing.models import Delivery, Destination
from apps.studies.models import FileState, Instance, Priority, PurgeRun, ReceivedInstance, RetentionPolicy

from .models import Heartbeat
from .services import free_bytes

QUEUES = ("ingest", "workflow", "deliver", "notify", "stat")
HISTOGRAM_WINDOW = timedelta(hours=1)
STAT_WINDOW = timedelta(hours=24)
# Upper bounds in seconds: from a fast path (a second) to a day (a study nobody could read at night).
LATENCY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
# Acknowledging a STAT study is minutes, its target typically 5 to 15.
ACK_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
SEND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RouterCollector(Collector):
    def collect(self):
        received = CounterMetricFamily(
            "router_instances_received", "Instances the SCP took custody of", labels=["state"]
        )
        for state, n in ReceivedInstance.objects.values_list("state").annotate(n=Count("id")):
            received.add_metric([state], n)
        yield received

        deliveries = GaugeMetricFamily(
            "router_deliveries", "Deliveries by destination and state", labels=["destination", "state"]
        )
        for name, state, n in Delivery.objects.values_list("destination__name", "state").annotate(n=Count("id")):
            deliveries.add_metric([name, state], n)
        yield deliveries

        receipt_to_assignment = Assignment.objects.aggregate(avg=Avg(F("assigned_at") - F("study__received_at")))["avg"]
        yield GaugeMetricFamily(
            "router_receipt_to_assignment_seconds_avg",
            "Average time from a study's receipt to its assignment",
            value=receipt_to_assignment.total_seconds() if receipt_to_assignment else 0.0,
        )

        breaches = CounterMetricFamily("router_sla_breaches", "SLA breaches recorded", labels=["kind"])
        for kind, n in SlaEvent.objects.filter(kind__endswith="breached").values_list("kind").annotate(n=Count("id")):
            breaches.add_metric([kind], n)
        yield breaches

        yield from _storage()

        depth = GaugeMetricFamily("router_queue_depth", "Messages waiting in each Celery queue", labels=["queue"])
        for queue, n in _queue_depths().items():
            depth.add_metric([queue], n)
        yield depth

        yield from _heartbeats()
        yield from _receipt()
        yield from _destinations()
        yield from _sla()
        yield from _histograms()


def _heartbeats():
    """Age of each process's last heartbeat (role: scp, worker, beat; name: host and port or Celery name)."""
    now = clock.now()
    age = GaugeMetricFamily(
        "router_heartbeat_age_seconds",
        "Seconds since each process last reported (beat: Beat's tick, run by the stat worker)",
        labels=["role", "name"],
    )
    refused = CounterMetricFamily(
        "router_scp_refused_connections",
        "Connections the SCP refused or dropped since the process started, by reason (docs/security.md)",
        labels=["scp", "reason"],
    )
    paced = CounterMetricFamily(
        "router_scp_paced_associations",
        "Association requests the SCP held for their turn (a host over its pace while others are served)",
        labels=["scp"],
    )
    for beat in Heartbeat.objects.order_by("role", "name"):
        age.add_metric([beat.role, beat.name], max((now - beat.last_seen).total_seconds(), 0.0))
        for reason, n in sorted((beat.counters or {}).get("refused", {}).items()):
            refused.add_metric([beat.name, reason], n)
        if beat.role == "scp":
            paced.add_metric([beat.name], (beat.counters or {}).get("paced", 0))
    yield age
    yield refused
    yield paced


def _receipt():
    last = ReceivedInstance.objects.aggregate(last=Max("received_at"))["last"]
    if last is not None:  # no series before the first instance: absent() says "never", an age would lie
        yield GaugeMetricFamily(
            "router_last_instance_received_age_seconds",
            "Seconds since the SCP (or STOW-RS) last took custody of an instance",
            value=max((clock.now() - last).total_seconds(), 0.0),
        )


def _destinations():
    """Per enabled destination: down (its C-ECHO fails), paused (a configuration error waits for an
    operator), and delivery failures (each time a delivery ended failed, a counter of the rows)."""
    down = GaugeMetricFamily(
        "router_destination_down", "1 while the destination's C-ECHO fails", labels=["destination"]
    )
    paused = GaugeMetricFamily(
        "router_destination_paused",
        "1 while the destination is paused for a configuration error (an operator resumes it)",
        labels=["destination"],
    )
    for name, health, config_error in Destination.objects.filter(enabled=True).values_list(
        "name", "health", "config_error"
    ):
        down.add_metric([name], 1.0 if health == "down" else 0.0)
        paused.add_metric([name], 1.0 if config_error else 0.0)
    yield down
    yield paused
    failures = CounterMetricFamily(
        "router_delivery_failures", "Times deliveries ended failed (retry budget spent)", labels=["destination"]
    )
    for name, n in Delivery.objects.values_list("destination__name").annotate(n=Sum("failures")):
        failures.add_metric([name], n or 0)
    yield failures


def _sla():
    """Open assignments past their acknowledgement target now, and the targets met or missed in the window."""
    now = clock.now()
    overdue = GaugeMetricFamily(
        "router_assignments_ack_overdue",
        "Open assignments not acknowledged by their acknowledgement target",
        labels=["priority"],
    )
    counts = dict(
        Assignment.objects.filter(status=Assignment.Status.ASSIGNED, acknowledge_due_at__lt=now)
        .values_list("study__priority")
        .annotate(n=Count("id"))
    )
    for priority in Priority.values:
        overdue.add_metric([priority], counts.get(priority, 0))
    yield overdue

    since = now - STAT_WINDOW
    for target, done, due in (
        ("ack", "acknowledged_at", "acknowledge_due_at"),
        ("report", "completed_at", "report_due_at"),
    ):
        family = GaugeMetricFamily(
            f"router_sla_{target}_window",
            f"Assignments {done.removesuffix('_at')} in the last {_hours(STAT_WINDOW)} h with a target, by whether "
            "they met it",
            labels=["priority", "result"],
        )
        rows = (
            Assignment.objects.filter(**{f"{done}__gte": since, f"{due}__isnull": False})
            .values_list("study__priority")
            .annotate(met=Count("id", filter=Q(**{f"{done}__lte": F(due)})), total=Count("id"))
        )
        for priority, met, total in rows:
            family.add_metric([priority or "", "met"], met)
            family.add_metric([priority or "", "missed"], total - met)
        yield family


def _histograms():
    now = clock.now()
    since = now - HISTOGRAM_WINDOW
    window = f"(rows of the last {_hours(HISTOGRAM_WINDOW)} h; not cumulative)"
    assigned = Assignment.objects.filter(assigned_at__gte=since).values_list("assigned_at", "study__received_at")
    yield _histogram(
        "router_receipt_to_assignment_seconds",
        f"From a study's receipt to its assignment {window}",
        LATENCY_BUCKETS,
        {(): [(a - r).total_seconds() for a, r in assigned]},
    )
    delivered = Delivery.objects.filter(state=Delivery.State.DELIVERED, delivered_at__gte=since).values_list(
        "destination__name", "delivered_at", "study__received_at"
    )
    by_destination: dict[tuple[str, ...], list[float]] = {}
    for name, d, r in delivered:
        by_destination.setdefault((name,), []).append((d - r).total_seconds())
    yield _histogram(
        "router_receipt_to_delivered_seconds",
        f"From a study's receipt to its delivery, per destination {window}",
        LATENCY_BUCKETS,
        by_destination,
        labels=["destination"],
    )
    acknowledged = Assignment.objects.filter(
        study__priority=Priority.STAT, acknowledged_at__gte=now - STAT_WINDOW
    ).values_list("acknowledged_at", "assigned_at")
    yield _histogram(
        "router_stat_acknowledgement_seconds",
        f"From a STAT study's assignment to its acknowledgement (rows of the last {_hours(STAT_WINDOW)} h)",
        ACK_BUCKETS,
        {(): [(a - s).total_seconds() for a, s in acknowledged]},
    )
    attempts = Delivery.objects.filter(last_attempt_at__gte=since, last_attempt_seconds__isnull=False).values_list(
        "destination__name", "last_attempt_seconds"
    )
    sends: dict[tuple[str, ...], list[float]] = {}
    for name, seconds in attempts:
        sends.setdefault((name,), []).append(seconds)
    yield _histogram(
        "router_delivery_send_seconds",
        f"Duration of each delivery's last sending attempt, per destination {window}",
        SEND_BUCKETS,
        sends,
        labels=["destination"],
    )


def _histogram(
    name: str, documentation: str, buckets: tuple, values: dict[tuple[str, ...], Iterable[float]], labels=()
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for label_values, observed in values.items():
        observed = sorted(observed)
        cumulative = [(str(float(b)), sum(1 for v in observed if v <= b)) for b in buckets]
        cumulative.append(("+Inf", len(observed)))
        family.add_metric(list(label_values), cumulative, sum(observed))
    return family


def _hours(window: timedelta) -> int:
    return int(window.total_seconds() // 3600)


def _storage():
    """What the storage holds and what the purge did (docs/storage.md)."""
    held = Instance.objects.exclude(file_state=FileState.PURGED)
    stored = held.aggregate(bytes=Sum("size"), oldest=Min("received__received_at"))
    yield GaugeMetricFamily("router_storage_bytes", "Bytes of instance files stored", value=stored["bytes"] or 0)
    last = PurgeRun.objects.order_by("-started_at", "-id").first()
    yield GaugeMetricFamily(
        "router_storage_purgeable_bytes",
        "Bytes the last purge left that an emergency could purge (delivered, retention not yet passed)",
        value=last.purgeable_bytes if last else 0,
    )
    purged = CounterMetricFamily("router_storage_purged_bytes", "Bytes of files purged, by reason", labels=["reason"])
    totals: dict[str, int] = {}
    for freed in PurgeRun.objects.values_list("bytes_freed", flat=True).iterator():
        for reason, size in freed.items():
            totals[reason] = totals.get(reason, 0) + size
    for reason, size in sorted(totals.items()):
        purged.add_metric([reason], size)
    yield purged
    free = free_bytes()
    if free is not None:  # unreadable storage: no series (absent() alerts), never a made-up zero
        yield GaugeMetricFamily("router_storage_free_bytes", "Free bytes on the storage's filesystem", value=free)
    yield GaugeMetricFamily(
        "router_storage_min_free_bytes",
        "The watermark below which the SCP refuses instances (STORAGE_MIN_FREE_BYTES)",
        value=settings.STORAGE_MIN_FREE_BYTES,
    )
    yield GaugeMetricFamily(
        "router_storage_emergency_threshold_bytes",
        "Free space below which the purge removes delivered files oldest first",
        value=RetentionPolicy.current().emergency_threshold(settings.STORAGE_MIN_FREE_BYTES),
    )
    oldest = stored["oldest"]
    yield GaugeMetricFamily(
        "router_storage_oldest_file_age_seconds",
        "Age of the oldest instance file not purged",
        value=(clock.now() - oldest).total_seconds() if oldest else 0.0,
    )


def _queue_depths() -> dict[str, int]:
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        return {}
    import redis

    try:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=2, socket_timeout=2)
        return {queue: client.llen(queue) for queue in QUEUES}
    except redis.RedisError:
        return {}
