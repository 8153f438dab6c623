"""The page theme, and whether the user supervises (for the menu), for every template that extends
reading/base.html: worklist, board, dashboard, login."""

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

THEME_COOKIE = "worklist_theme"


def _theme(request: HttpRequest) -> str:
    from . import selectors

    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return selectors.preference_of(user=user).theme
    # Logged out (the login page): the theme this browser last chose, kept in a cookie beside the preference.
    return "light" if request.COOKIES.get(THEME_COOKIE) == "light" else "dark"


def _supervises(request: HttpRequest) -> bool:
    from .defaults import SUPERVISORS_GROUP

    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return False
    return user.is_staff or user.groups.filter(name=SUPERVISORS_GROUP).exists()


def ui_theme(request: HttpRequest) -> dict:
    # Lazy: admin pages render with this processor too and never read these, so they pay no query.
    return {
        "ui_theme": SimpleLazyObject(lambda: _theme(request)),
        "ui_supervisor": SimpleLazyObject(lambda: _supervises(request)),
    }
