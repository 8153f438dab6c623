"""Staff pages that span domains: a study's timeline and the dashboard. Thin over reports."""

from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from apps.audit.services import audit_views
from apps.core import clock
from apps.reading.defaults import SUPERVISORS_GROUP
from apps.studies.models import Study

from . import reports


@staff_member_required
def study_timeline(request: HttpRequest, study_id: int) -> HttpResponse:
    study = get_object_or_404(Study, pk=study_id)
    audit_views(request=request, action="admin.studies.timeline", studies=[study])
    return render(
        request, "pipeline/timeline.html", {"study": study, "events": reports.study_timeline(study_id=study.pk)}
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_staff or request.user.groups.filter(name=SUPERVISORS_GROUP).exists()):
        return render(request, "reading/no_role.html", status=403)
    return render(request, "pipeline/dashboard.html", {"charts": reports.dashboard(now=clock.now(), days=14)})
