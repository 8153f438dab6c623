"""The worklist page: thin views over the reading selectors and services. Every view of it writes one
audit event per study shown."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from apps.audit.services import audit_views
from apps.core import clock

from . import selectors, services
from .defaults import SUPERVISORS_GROUP
from .models import Assignment

TRANSITIONS = {
    "acknowledge": services.assignment_acknowledge,
    "start": services.assignment_start,
    "complete": services.assignment_complete,
}


def _supervises(user) -> bool:
    return user.is_staff or user.groups.filter(name=SUPERVISORS_GROUP).exists()


@login_required
def worklist(request: HttpRequest) -> HttpResponse:
    supervisor = _supervises(request.user)
    if not supervisor and not hasattr(request.user, "radiologist"):
        return render(request, "reading/no_role.html", status=403)
    data = selectors.worklist(user=request.user, sees_everything=supervisor, now=clock.now())
    audit_views(request=request, action="worklist.view", studies=[row["study"] for row in data["rows"]])
    template = "reading/_rows.html" if request.GET.get("partial") else "reading/worklist.html"
    return render(request, template, {**data, "supervisor": supervisor})


@login_required
@require_POST
def transition(request: HttpRequest, assignment_id: int, name: str) -> HttpResponse:
    assignment = get_object_or_404(Assignment, pk=assignment_id)
    mine = assignment.radiologist.user_id == request.user.pk
    if name == "reassign":
        if not _supervises(request.user):
            raise Http404
        services.assignment_reassign(assignment_id=assignment.pk)
    elif name in TRANSITIONS and (mine or _supervises(request.user)):
        TRANSITIONS[name](assignment_id=assignment.pk)
    else:
        raise Http404  # another reader's assignment looks like no assignment at all
    return redirect("worklist")
