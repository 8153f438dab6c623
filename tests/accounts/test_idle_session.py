"""Idle session timeout on the worklist and admin, with an injected clock: a session with no request from its
user for SESSION_IDLE_TIMEOUT seconds is logged out; one in use is not; the worklist's background poll is
served but is not use."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client

from apps.accounts.services import token_issue
from apps.reading.models import Radiologist

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TIMEOUT = 60
POLL = {"HTTP_X_BACKGROUND_REFRESH": "1"}


@pytest.fixture
def clock(monkeypatch, settings):
    settings.SESSION_IDLE_TIMEOUT = TIMEOUT
    state = {"now": T0}
    monkeypatch.setattr("apps.core.clock.now", lambda: state["now"])

    def at(seconds: float) -> None:
        state["now"] = T0 + timedelta(seconds=seconds)

    return at


def logged_out(response) -> bool:
    return response.status_code == 302 and "login" in response["Location"]


def test_an_idle_worklist_session_is_logged_out_after_the_timeout(clock):
    clock(0)
    reader = _login_reader()
    assert reader.get("/worklist/").status_code == 200
    clock(TIMEOUT + 1)
    assert logged_out(reader.get("/worklist/"))
    clock(TIMEOUT + 2)
    assert logged_out(reader.get("/worklist/"))  # gone for good, not only for one request
    assert "_auth_user_id" not in reader.session


def test_a_session_in_use_stays_logged_in_past_the_timeout(clock):
    clock(0)
    reader = _login_reader()
    for step in range(1, 6):
        clock(step * (TIMEOUT - 10))  # 250 s in all, never 60 s apart
        assert reader.get("/worklist/").status_code == 200


def test_the_idle_time_counts_from_the_login(clock):
    clock(0)
    reader = _login_reader()
    clock(TIMEOUT + 1)
    assert logged_out(reader.get("/worklist/"))


def test_the_worklist_poll_and_push_stream_do_not_keep_an_idle_session_alive(clock):
    clock(0)
    reader = _login_reader()
    for seconds in (5, 20, 40, 55):
        clock(seconds)
        assert reader.get("/worklist/?partial=1", **POLL).status_code == 200
        stream = reader.get("/worklist/events/")  # EventSource sends no header: the stream is background itself
        assert stream.status_code == 200 and stream["Content-Type"] == "text/event-stream"
    clock(TIMEOUT + 1)
    # The page's script is told to reload itself (onto the login form) rather than given the form as rows.
    refused = reader.get("/worklist/?partial=1", **POLL)
    assert refused.status_code == 401 and refused["HX-Refresh"] == "true"
    assert logged_out(reader.get("/worklist/"))


def test_an_idle_admin_session_is_logged_out_and_an_active_one_is_not(clock):
    clock(0)
    staff = _login_staff()
    clock(TIMEOUT - 1)
    assert staff.get("/admin/").status_code == 200
    clock(2 * TIMEOUT - 2)
    assert staff.get("/admin/audit/auditevent/").status_code == 200
    clock(3 * TIMEOUT)
    assert logged_out(staff.get("/admin/"))


def test_a_token_request_has_no_session_to_time_out(clock):
    _, raw = token_issue(user=User.objects.create_superuser("ops", "ops@example.org", "pw"), name="probe")
    client = Client(HTTP_AUTHORIZATION=f"Token {raw}")
    clock(0)
    assert client.get("/api/v1/assignments/").status_code == 200
    clock(10 * TIMEOUT)
    response = client.get("/api/v1/assignments/")
    assert response.status_code == 200 and "sessionid" not in response.cookies


def _login_reader() -> Client:
    user = User.objects.create_user("ann", "ann@example.org", "correct horse")
    Radiologist.objects.create(user=user, display_name="Ann", specialty="neuroradiology")
    client = Client()
    assert client.post("/accounts/login/", {"username": "ann", "password": "correct horse"}).status_code == 302
    return client


def _login_staff() -> Client:
    User.objects.create_superuser("admin", "admin@example.org", "pw")
    client = Client()
    assert client.post("/admin/login/?next=/admin/", {"username": "admin", "password": "pw"}).status_code == 302
    return client
