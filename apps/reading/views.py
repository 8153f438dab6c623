"""The worklist and the supervisor board: thin views over the reading selectors and services. Every view of
them writes one audit event per study shown, and every action one event on its study.

The rows are fetched as partials (on a push event, after an action, on a filter change); the push itself is a
server-sent-events stream (push.py). Studies reach a viewer through `viewer_links`, a function the URLconf
passes in (reading does not know routing's deliveries; routerproject composes the two)."""

from collections.abc import Callable
from functools import wraps

from django import db
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import BACKGROUND_HEADER
from apps.audit.services import audit_action, audit_views
from apps.core import clock

from . import push, selectors, services
from .context_processors import THEME_COOKIE
from .defaults import SUPERVISORS_GROUP
from .models import Assignment
from .worklist_filters import filters_parse

ViewerLinks = Callable[..., dict[int, str]]

TRANSITIONS = {
    "acknowledge": services.assignment_acknowledge,
    "start": services.assignment_start,
    "complete": services.assignment_complete,
}


def _no_links(*, study_ids: list[int]) -> dict[int, str]:
    return {}


def _supervises(user) -> bool:
    """Staff, or in the supervisors group (asked once per request: the user object is the request's)."""
    if not hasattr(user, "_supervises"):
        user._supervises = user.is_staff or user.groups.filter(name=SUPERVISORS_GROUP).exists()
    return user._supervises


def _partial(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true" or request.META.get(BACKGROUND_HEADER) == "1"


def page_login_required(view):
    """login_required, except that a partial asked for by the page's script gets 401 with `HX-Refresh`: the
    page reloads itself onto the login form instead of showing it inside the table."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if _partial(request):
            return HttpResponse(status=401, headers={"HX-Refresh": "true"})
        return redirect_to_login(request.get_full_path())

    return wrapper


def _context(request: HttpRequest, **extra) -> dict:
    return {
        "preference": extra.pop("preference", None) or selectors.preference_of(user=request.user),
        "supervisor": _supervises(request.user),
        "fallback_poll_ms": int(settings.WORKLIST_FALLBACK_POLL * 1000),
        **extra,
    }


def _worklist_data(request: HttpRequest, viewer_links: ViewerLinks) -> dict:
    preference = selectors.preference_of(user=request.user)
    filters = filters_parse(preference.filters)
    supervisor = _supervises(request.user)
    data = selectors.worklist(user=request.user, sees_everything=supervisor, now=clock.now(), filters=filters)
    links = viewer_links(study_ids=[row["study"].pk for row in data["rows"]])
    for row in data["rows"]:
        row["viewer"] = links.get(row["study"].pk)
    data["marker"] = selectors.worklist_marker(user=request.user, sees_everything=supervisor, viewer_links=viewer_links)
    audit_views(request=request, action="worklist.view", studies=[row["study"] for row in data["rows"]])
    return {**data, "filters": filters, "preference": preference}


def _live(response: HttpResponse, marker: str) -> HttpResponse:
    """What the page's script reads from a partial: the marker of its content, and the server's clock (the
    countdowns count from it, not from the browser's)."""
    response["X-Worklist-Marker"] = marker
    response["X-Server-Time-Ms"] = str(int(clock.now().timestamp() * 1000))
    response["Cache-Control"] = "no-store"
    return response


def _rows(request: HttpRequest, viewer_links: ViewerLinks) -> HttpResponse:
    data = _worklist_data(request, viewer_links)
    return _live(render(request, "reading/_rows.html", _context(request, **data)), data["marker"])


@page_login_required
@require_GET
def worklist(request: HttpRequest, viewer_links: ViewerLinks = _no_links) -> HttpResponse:
    supervisor = _supervises(request.user)
    if not supervisor and not hasattr(request.user, "radiologist"):
        return render(request, "reading/no_role.html", status=403)
    if request.GET.get("partial"):
        return _rows(request, viewer_links)
    return render(request, "reading/worklist.html", _context(request, **_worklist_data(request, viewer_links)))


@page_login_required
@require_GET
def rows(request: HttpRequest, viewer_links: ViewerLinks = _no_links) -> HttpResponse:
    if not _supervises(request.user) and not hasattr(request.user, "radiologist"):
        raise Http404
    return _rows(request, viewer_links)


@page_login_required
@require_GET
def events(request: HttpRequest, scope: str = "worklist", viewer_links: ViewerLinks | None = None) -> HttpResponse:
    """The page's push stream. Background by nature: it must not keep an unattended session alive (the
    idle-timeout middleware reads this mark after the view), and EventSource cannot send the header."""
    request.META[BACKGROUND_HEADER] = "1"
    supervisor = _supervises(request.user)
    if scope == "board" and not supervisor:
        raise Http404
    if not supervisor and not hasattr(request.user, "radiologist"):
        raise Http404
    user = request.user

    def marker() -> str:
        # The same marker as the rows the page holds: with the viewer links on the worklist, not on the board.
        return selectors.worklist_marker(user=user, sees_everything=supervisor, viewer_links=viewer_links)

    # The stream's database connection is closed as soon as it ends, not whenever the server finishes it.
    stream = push.admit(
        push.marker_events(marker, lifetime=settings.WORKLIST_PUSH_LIFETIME),
        on_close=db.connection.close,
        limit=settings.WORKLIST_PUSH_STREAMS,
    )
    if stream is None:
        # Every place taken. 204 is how the server-sent-events standard tells a browser not to reconnect: the
        # page polls, and asks for a stream again later (static/reading/live.js). Not a 5xx: an expected
        # state, which Django would log as an error for each page.
        push.refused(limit=settings.WORKLIST_PUSH_STREAMS)
        return HttpResponse(status=204, headers={"Cache-Control": "no-store"})
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy must pass each event on at once
    return response


@page_login_required
@require_POST
def filters(request: HttpRequest, viewer_links: ViewerLinks = _no_links) -> HttpResponse:
    """Save the filters and search (a POST, so the search, maybe a patient id, is in no URL or access log)."""
    clear = bool(request.POST.get("clear"))
    services.preference_update(user=request.user, filters=filters_parse({} if clear else request.POST))
    if clear and _partial(request):
        return HttpResponse(headers={"HX-Refresh": "true"})  # the whole page: its form shows no filters
    if _partial(request):
        return _rows(request, viewer_links)
    return redirect("worklist")


@page_login_required
@require_POST
def preferences(request: HttpRequest) -> HttpResponse:
    theme = request.POST.get("theme")
    acknowledge = request.POST.get("open_acknowledges_stat")
    services.preference_update(
        user=request.user,
        theme=theme or None,
        open_acknowledges_stat=None if acknowledge is None else acknowledge == "1",
    )
    response = _back(request, "worklist")
    if theme in ("dark", "light"):  # the login page, logged out, shows the theme this browser chose last
        response.set_cookie(THEME_COOKIE, theme, max_age=365 * 86400, samesite="Lax", httponly=True)
    return response


def _back(request: HttpRequest, default: str) -> HttpResponse:
    """Back to the page the form was on (same site only), else `default`."""
    target = request.POST.get("next", "")
    if target.startswith("/") and url_has_allowed_host_and_scheme(target, allowed_hosts=None):
        return HttpResponseRedirect(target)
    return redirect(default)


def _own_or_404(request: HttpRequest, assignment_id: int) -> Assignment:
    assignment = get_object_or_404(Assignment.objects.select_related("study", "radiologist"), pk=assignment_id)
    if assignment.radiologist.user_id != request.user.pk and not _supervises(request.user):
        raise Http404  # another reader's assignment looks like no assignment at all
    return assignment


@page_login_required
@require_POST
def transition(
    request: HttpRequest, assignment_id: int, name: str, viewer_links: ViewerLinks = _no_links
) -> HttpResponse:
    assignment = _own_or_404(request, assignment_id)
    if name == "reassign":
        if not _supervises(request.user):
            raise Http404
        replacement = services.assignment_reassign(assignment_id=assignment.pk)
        done = replacement is not None
        detail = f"assignment {assignment.pk} -> " + (
            f"reader {replacement.radiologist_id}" if done else "no other reader"
        )
    elif name in TRANSITIONS:
        done = TRANSITIONS[name](assignment_id=assignment.pk)
        detail = f"assignment {assignment.pk}" + ("" if done else f" (already past {name})")
    else:
        raise Http404
    audit_action(
        request=request,
        action=f"worklist.{name}",
        study=assignment.study,
        study_instance_uid=assignment.study.study_instance_uid,
        detail=detail,
    )
    if _partial(request):
        if request.POST.get("from") == "board":
            return _board_rows(request)
        return _rows(request, viewer_links)
    return _back(request, "worklist")


@page_login_required
@require_POST
def open_in_viewer(request: HttpRequest, assignment_id: int, viewer_links: ViewerLinks = _no_links) -> HttpResponse:
    """Open the study in the viewer of the first destination it was delivered to that has one; a STAT
    assignment is acknowledged by it when the reader chose so."""
    assignment = _own_or_404(request, assignment_id)
    url = viewer_links(study_ids=[assignment.study_id]).get(assignment.study_id)
    if url is None:
        raise Http404
    mine = assignment.radiologist.user_id == request.user.pk
    preference = selectors.preference_of(user=request.user)
    acknowledged = mine and services.assignment_open(
        assignment_id=assignment.pk, acknowledge_stat=preference.open_acknowledges_stat
    )
    audit_action(
        request=request,
        action="worklist.open",
        study=assignment.study,
        study_instance_uid=assignment.study.study_instance_uid,
        detail=f"assignment {assignment.pk} in the viewer" + ("; acknowledged" if acknowledged else ""),
    )
    if acknowledged:
        audit_action(
            request=request,
            action="worklist.acknowledge",
            study=assignment.study,
            study_instance_uid=assignment.study.study_instance_uid,
            detail=f"assignment {assignment.pk} (by opening it)",
        )
    return HttpResponseRedirect(url)


def _board_data(request: HttpRequest) -> dict:
    data = selectors.board(now=clock.now())
    data["marker"] = selectors.worklist_marker(user=request.user, sees_everything=True)
    studies = [row["study"] for row in data["open_rows"]] + data["unassigned"] + data["held"]
    audit_views(request=request, action="board.view", studies=studies)
    return data


def _board_rows(request: HttpRequest) -> HttpResponse:
    data = _board_data(request)
    return _live(render(request, "reading/_board.html", _context(request, **data)), data["marker"])


@page_login_required
@require_GET
def board(request: HttpRequest) -> HttpResponse:
    if not _supervises(request.user):
        return render(request, "reading/no_role.html", status=403)
    if request.GET.get("partial"):
        return _board_rows(request)
    return render(request, "reading/board.html", _context(request, **_board_data(request)))
