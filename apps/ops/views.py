from django.http import HttpRequest, JsonResponse

from . import services


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the router can take and process studies, 503 with the reasons when it cannot."""
    healthy, report = services.health()
    return JsonResponse(report, status=200 if healthy else 503)
