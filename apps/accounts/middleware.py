"""Idle session timeout for the worklist and admin (and the browsable API): a logged-in session with no
request from its user for SESSION_IDLE_TIMEOUT seconds is logged out on its next request.

The last activity is a timestamp in the session, read from the one clock. A request with the header
`X-Background-Refresh: 1` (the worklist's 5-second poll) is served but is not activity: an unattended worklist
does not stay logged in, and its poll brings it back to the login page. A client that sends the header only
shortens its own session."""

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import SESSION_KEY, logout
from django.http import HttpRequest, HttpResponse

from apps.core import clock

LAST_ACTIVITY = "accounts.last_activity"
BACKGROUND_HEADER = "HTTP_X_BACKGROUND_REFRESH"


class IdleSessionTimeoutMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        now = clock.now().timestamp()
        if _logged_in(request) and now - request.session.get(LAST_ACTIVITY, now) > settings.SESSION_IDLE_TIMEOUT:
            logout(request)  # flushes the session: the view sees an anonymous user and sends it to log in
        response = self.get_response(request)
        # After the view, so the request that logs in starts the clock; a logout has emptied the session.
        if _logged_in(request) and request.META.get(BACKGROUND_HEADER) != "1":
            request.session[LAST_ACTIVITY] = now
        return response


def _logged_in(request: HttpRequest) -> bool:
    # is_empty() first: a request without a session (an API token, a health probe) never loads one.
    return not request.session.is_empty() and SESSION_KEY in request.session
