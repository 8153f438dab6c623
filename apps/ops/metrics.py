"""Prometheus metrics, read from the database (the source of truth) at each scrape, and the broker's
queue depths when the broker is Redis."""

from django.conf import settings
from django.db.models import Avg, Count, F
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from apps.reading.models import Assignment, SlaEvent
from apps.routing.models import Delivery
from apps.studies.models import ReceivedInstance

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

        depth = GaugeMetricFamily("router_queue_depth", "Messages waiting in each Celery queue", labels=["queue"])
        for queue, n in _queue_depths().items():
            depth.add_metric([queue], n)
        yield depth


def _queue_depths() -> dict[str, int]:
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        return {}
    import redis

    try:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=2, socket_timeout=2)
        return {queue: client.llen(queue) for queue in QUEUES}
    except redis.RedisError:
        return {}
