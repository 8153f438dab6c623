"""Staff pages that span domains: a study's timeline and the dashboard. Thin over reports."""

from datetime import UTC, date, datetime, time, timedelta

from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from apps.audit.services import audit_views
from apps.core import clock
from apps.reading.defaults import SUPERVISORS_GROUP
from apps.studies.models import Study

from . import reports

DEFAULT_DAYS = 14
MAX_DAYS = 92  # the SLA chart asks once per day


@staff_member_required
def study_timeline(request: HttpRequest, study_id: int) -> HttpResponse:
    study = get_object_or_404(Study, pk=study_id)
    audit_views(request=request, action="admin.studies.timeline", studies=[study])
    steps = reports.timeline_steps(reports.study_timeline(study_id=study.pk))
    return render(request, "pipeline/timeline.html", {"study": study, "steps": steps})


def dashboard_range(query, *, today: date) -> tuple[date, date, list[str]]:
    """The dashboard's period from `?start=YYYY-MM-DD&end=YYYY-MM-DD` (both days included), with what was
    wrong in it; default and fallback: the 14 days up to today. At most MAX_DAYS days."""
    errors = []
    try:
        end = date.fromisoformat(query.get("end") or today.isoformat())
        start = date.fromisoformat(query.get("start") or (end - timedelta(days=DEFAULT_DAYS - 1)).isoformat())
    except ValueError:
        return today - timedelta(days=DEFAULT_DAYS - 1), today, ["Dates are YYYY-MM-DD."]
    if start > end:
        start, end = end, start
    if (end - start).days + 1 > MAX_DAYS:
        start = end - timedelta(days=MAX_DAYS - 1)
        errors.append(f"At most {MAX_DAYS} days: the period starts on {start}.")
    return start, end, errors


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_staff or request.user.groups.filter(name=SUPERVISORS_GROUP).exists()):
        return render(request, "reading/no_role.html", status=403)
    start, end, errors = dashboard_range(request.GET, today=clock.now().date())
    period_end = datetime.combine(end + timedelta(days=1), time(0), tzinfo=UTC) - timedelta(microseconds=1)
    charts = reports.dashboard(now=period_end, days=(end - start).days + 1)
    return render(request, "pipeline/dashboard.html", {"charts": charts, "start": start, "end": end, "errors": errors})
