"""Prometheus metrics, read from the database (the source of truth) at each scrape, and the broker's
queue depths when the broker is Redis."""

from django.conf import settings
from django.db.models import Avg, Count, F, Min, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from apps.core import clock
from apps.reading.models import Assignment, SlaEvent
from apps.routing.models import Delivery
from apps.studies.models import FileState, Instance, PurgeRun, ReceivedInstance

QUEUES = ("ingest", "workflow", "deliver", "notify", "stat")


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
