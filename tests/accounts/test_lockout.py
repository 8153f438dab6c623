"""Login lockout (django-axes) on the three logins: the worklist's form, the admin's, and the API's token
login. After N failures a username is locked whatever the address, and an address whatever the username;
the lock lifts after the cool-off or when staff delete the attempts; each locked attempt is audited, and the
password is written nowhere."""

import base64
import logging
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.db.models import F
from django.test import Client
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"
WRONG = "Tr0ub4dor&3"
LIMIT = 3
OK = {"worklist": 302, "admin": 302, "api": 200}
REFUSED = {"worklist": 200, "admin": 200, "api": 401}  # the form again, or 401: a plain wrong password
LOCKED = 429
LOGINS = list(OK)


@pytest.fixture(autouse=True)
def accounts(db, settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    for name in ("ann", "bob"):
        User.objects.create_user(name, f"{name}@example.org", PASSWORD, is_staff=True)  # staff: admin logins too


def attempt(login: str, username: str, password: str, address: str):
    if login == "api":
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        return APIClient().post("/api/v1/auth/login/", HTTP_AUTHORIZATION=f"Basic {credentials}", REMOTE_ADDR=address)
    url = "/accounts/login/" if login == "worklist" else "/admin/login/?next=/admin/"
    return Client().post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def status(login: str, username: str, password: str, address: str) -> int:
    return attempt(login, username, password, address).status_code


def lock_username(login: str, username: str = "ann") -> None:
    """LIMIT failures for `username`, each from its own address; the last one locks."""
    for i in range(1, LIMIT):
        assert status(login, username, WRONG, f"10.0.0.{i}") == REFUSED[login]
    assert status(login, username, WRONG, f"10.0.0.{LIMIT}") == LOCKED


@pytest.mark.parametrize("login", LOGINS)
def test_a_username_is_locked_after_n_failures_from_any_address(login):
    assert status(login, "ann", PASSWORD, "10.0.9.1") == OK[login]
    lock_username(login)
    assert status(login, "ann", PASSWORD, "10.0.9.2") == LOCKED  # the right password, a fresh address
    assert status(login, "bob", PASSWORD, "10.0.0.1") == OK[login]  # that address failed once only


@pytest.mark.parametrize("login", LOGINS)
def test_an_address_is_locked_after_n_failures_whatever_the_username(login):
    for i in range(1, LIMIT):
        assert status(login, f"guess{i}", WRONG, "10.0.1.1") == REFUSED[login]
    assert status(login, f"guess{LIMIT}", WRONG, "10.0.1.1") == LOCKED
    assert status(login, "ann", PASSWORD, "10.0.1.1") == LOCKED  # a real account, from the locked address
    assert status(login, "ann", PASSWORD, "10.0.1.2") == OK[login]  # the same account from elsewhere


@pytest.mark.parametrize("login", LOGINS)
def test_a_locked_attempt_is_audited_and_the_password_is_written_nowhere(login, caplog):
    caplog.set_level(logging.DEBUG)
    lock_username(login)
    assert status(login, "ann", PASSWORD, "10.0.9.9") == LOCKED
    events = AuditEvent.objects.filter(action="login.locked_out").order_by("id")
    assert events.count() == 2  # the failure that locked, and the attempt refused
    refused = events.last()
    assert (refused.user, refused.username, refused.source_address, refused.study_instance_uid) == (
        None,
        "ann",
        "10.0.9.9",
        "",
    )
    path = "/api/v1/auth/login/" if login == "api" else ("/accounts/login/" if login == "worklist" else "/admin/login/")
    assert path in refused.detail
    written = [
        str(value) for row in [*AuditEvent.objects.values(), *AccessAttempt.objects.values()] for value in row.values()
    ]
    for secret in (PASSWORD, WRONG):
        assert not any(secret in value for value in written)
        assert secret not in caplog.text


def test_a_failure_below_the_limit_and_a_success_write_no_lockout_event():
    assert status("worklist", "ann", WRONG, "10.0.2.1") == REFUSED["worklist"]
    assert status("worklist", "ann", PASSWORD, "10.0.2.1") == OK["worklist"]
    assert not AuditEvent.objects.filter(action="login.locked_out").exists()


def test_the_api_login_says_when_to_retry(settings):
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    lock_username("api")
    response = attempt("api", "ann", PASSWORD, "10.0.9.3")
    assert response.status_code == LOCKED
    assert response["Retry-After"] == "900"
    assert response.json()["error"]["code"] == "throttled"


def test_the_worklist_lockout_page_says_what_happened():
    lock_username("worklist")
    page = attempt("worklist", "ann", PASSWORD, "10.0.9.4").content.decode()
    assert "Too many failed logins" in page and "administrator" in page


def test_the_lock_lifts_after_the_cool_off(settings):
    lock_username("worklist")
    assert status("worklist", "ann", PASSWORD, "10.0.9.5") == LOCKED
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert status("worklist", "ann", PASSWORD, "10.0.9.5") == OK["worklist"]


def test_refused_attempts_do_not_extend_the_lock(settings):
    lock_username("worklist")
    locked_at = AccessAttempt.objects.order_by("-attempt_time").values_list("attempt_time", flat=True)[0]
    assert status("worklist", "ann", WRONG, "10.0.9.6") == LOCKED
    assert AccessAttempt.objects.order_by("-attempt_time").values_list("attempt_time", flat=True)[0] == locked_at


@pytest.mark.parametrize("login", LOGINS)
def test_staff_unlock_a_username_by_deleting_its_attempts_in_admin(login):
    lock_username(login)
    staff = Client()
    staff.force_login(User.objects.create_superuser("admin", "admin@example.org", "pw"))
    listing = staff.get("/admin/axes/accessattempt/?q=ann")
    assert listing.status_code == 200 and "10.0.0.1" in listing.content.decode()
    selected = list(AccessAttempt.objects.filter(username="ann").values_list("pk", flat=True))
    assert len(selected) == LIMIT
    response = staff.post(
        "/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": selected, "post": "yes"}
    )
    assert response.status_code == 302
    assert status(login, "ann", PASSWORD, "10.0.9.7") == OK[login]


def test_staff_unlock_an_address_the_same_way():
    for i in range(LIMIT):
        status("admin", f"guess{i}", WRONG, "10.0.3.1")
    assert status("admin", "ann", PASSWORD, "10.0.3.1") == LOCKED
    staff = Client()
    staff.force_login(User.objects.create_superuser("admin", "admin@example.org", "pw"))
    selected = list(AccessAttempt.objects.filter(ip_address="10.0.3.1").values_list("pk", flat=True))
    staff.post("/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": selected, "post": "yes"})
    assert status("admin", "ann", PASSWORD, "10.0.3.1") == OK["admin"]


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_the_login_forms_still_require_the_csrf_token(url):
    browser = Client(enforce_csrf_checks=True)
    assert browser.post(url, {"username": "ann", "password": PASSWORD}).status_code == 403
    token = browser.get(url).context["csrf_token"]
    response = browser.post(url, {"username": "ann", "password": PASSWORD, "csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302
