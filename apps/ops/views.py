from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from . import services
from .metrics import RouterCollector


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the router can take and process studies, 503 with the reasons when it cannot."""
    healthy, report = services.health()
    return JsonResponse(report, status=200 if healthy else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format. Counts only (no patient data); put it behind the network's scrape ACL."""
    registry = CollectorRegistry()
    registry.register(RouterCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
