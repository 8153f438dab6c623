"""API tokens: stored as a digest, named, several per user, expiring, revoked by deleting them in admin; the
token itself is shown once (admin, `issuetoken`, the API login) and never again."""

import base64
import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiToken
from apps.accounts.services import token_issue

pytestmark = pytest.mark.django_db

API = "/api/v1/assignments/"


@pytest.fixture
def supervisor(db) -> User:
    user = User.objects.create_user("sam", "sam@example.org", "correct horse")
    user.groups.add(Group.objects.create(name="supervisors"))
    return user


@pytest.fixture
def staff_client(client):
    client.force_login(User.objects.create_superuser("admin", "admin@example.org", "pw"))
    return client


def api(token: str | None = None, **headers) -> APIClient:
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}", **headers)
    return client


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def rows_containing(text: str) -> list[tuple]:
    """Every row of the token table and the admin log whose text contains `text`."""
    found = []
    with connection.cursor() as cursor:
        for table in (ApiToken._meta.db_table, LogEntry._meta.db_table):
            cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - table names are ours
            found += [row for row in cursor.fetchall() if any(text in str(value) for value in row)]
    return found


def test_a_token_is_stored_as_its_sha512_digest_and_never_in_clear(supervisor):
    token, raw = token_issue(user=supervisor, name="RIS feed")
    assert ApiToken.objects.get().digest == hashlib.sha512(raw.encode()).hexdigest() == token.digest
    assert len(raw) == 64
    assert rows_containing(raw) == []
    assert api(raw).get(API).status_code == 200  # the `Token ...` header of rest_framework.authtoken still works


def test_a_user_has_several_named_tokens_and_revoking_one_leaves_the_others(supervisor):
    (feed, feed_raw), (dash, dash_raw) = (token_issue(user=supervisor, name=n) for n in ("RIS feed", "dashboard"))
    assert sorted(supervisor.auth_token_set.values_list("name", flat=True)) == ["RIS feed", "dashboard"]
    assert api(feed_raw).get(API).status_code == api(dash_raw).get(API).status_code == 200
    feed.delete()
    assert api(feed_raw).get(API).status_code == 401
    assert api(dash_raw).get(API).status_code == 200


def test_an_expired_token_is_refused_and_forgotten(supervisor):
    token, raw = token_issue(user=supervisor, name="old script", days=1)
    ApiToken.objects.filter(pk=token.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    response = api(raw).get(API)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid token."
    assert not ApiToken.objects.exists()


def test_a_token_expires_after_api_token_days_unless_told_otherwise(supervisor, settings):
    settings.API_TOKEN_DAYS = 7
    default, _ = token_issue(user=supervisor, name="default")
    longer, _ = token_issue(user=supervisor, name="longer", days=30)
    now = timezone.now()
    assert now + timedelta(days=7) - timedelta(minutes=1) < default.expiry <= now + timedelta(days=7)
    assert now + timedelta(days=30) - timedelta(minutes=1) < longer.expiry <= now + timedelta(days=30)
    with pytest.raises(ValueError):
        token_issue(user=supervisor, name="never", days=0)


def test_staff_add_a_token_in_admin_and_see_it_once(staff_client, supervisor):
    response = staff_client.post(
        reverse("admin:accounts_apitoken_add"), {"user": supervisor.pk, "name": "PACS sync", "days": 10}, follow=True
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    token = ApiToken.objects.get()
    raw = next(word for m in shown for word in m.split() if len(word) == 64)
    assert (token.user, token.name) == (supervisor, "PACS sync")
    assert timedelta(days=9, hours=23) < token.expiry - timezone.now() <= timedelta(days=10)
    assert api(raw).get(API).status_code == 200
    assert rows_containing(raw) == []
    again = staff_client.get(reverse("admin:accounts_apitoken_changelist"))
    assert "PACS sync" in again.content.decode() and raw not in again.content.decode()
    assert raw not in staff_client.get(reverse("admin:accounts_apitoken_change", args=[token.pk])).content.decode()


def test_staff_revoke_a_token_by_deleting_it_in_admin(staff_client, supervisor):
    token, raw = token_issue(user=supervisor, name="leaked")
    url = reverse("admin:accounts_apitoken_delete", args=[token.pk])
    assert staff_client.post(url, {"post": "yes"}).status_code == 302
    assert api(raw).get(API).status_code == 401


def test_a_token_cannot_be_edited_in_admin(staff_client, supervisor):
    token, _ = token_issue(user=supervisor, name="fixed")
    url = reverse("admin:accounts_apitoken_change", args=[token.pk])
    staff_client.post(url, {"user": supervisor.pk, "name": "renamed"})
    assert ApiToken.objects.get().name == "fixed"


def test_issuetoken_prints_the_token_alone_on_stdout_once(supervisor):
    out, err = StringIO(), StringIO()
    call_command("issuetoken", "sam", "--name", "nightly export", "--days", "3", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    token = ApiToken.objects.get()
    assert out.getvalue() == raw + "\n" and len(raw) == 64
    assert "nightly export" in err.getvalue() and "shown this once" in err.getvalue()
    assert token.name == "nightly export" and token.expiry - timezone.now() <= timedelta(days=3)
    assert rows_containing(raw) == []
    assert api(raw).get(API).status_code == 200


def test_issuetoken_refuses_an_unknown_user_and_a_token_without_a_lifetime(supervisor):
    with pytest.raises(CommandError, match="No user"):
        call_command("issuetoken", "nobody", "--name", "x", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="--days"):
        call_command("issuetoken", "sam", "--name", "x", "--days", "0", stdout=StringIO(), stderr=StringIO())
    assert not ApiToken.objects.exists()


def test_the_api_login_gives_a_named_token_for_basic_credentials(supervisor, settings):
    settings.API_TOKEN_DAYS = 5
    response = APIClient().post(
        "/api/v1/auth/login/", {"name": "laptop"}, format="json", HTTP_AUTHORIZATION=basic("sam", "correct horse")
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"token", "name", "expiry"} and body["name"] == "laptop"
    assert ApiToken.objects.get().name == "laptop"
    assert rows_containing(body["token"]) == []
    assert api(body["token"]).get(API).status_code == 200


def test_the_api_login_refuses_a_wrong_password_and_a_token(supervisor):
    wrong = APIClient().post("/api/v1/auth/login/", HTTP_AUTHORIZATION=basic("sam", "wrong"))
    assert wrong.status_code == 401
    _, raw = token_issue(user=supervisor, name="t")
    assert api(raw).post("/api/v1/auth/login/").status_code == 401  # a token does not mint more tokens
    assert ApiToken.objects.count() == 1


def test_logout_revokes_the_token_used_and_logoutall_every_token(supervisor):
    (_, first), (_, second), (_, third) = (token_issue(user=supervisor, name=f"t{i}") for i in range(3))
    assert api(first).post("/api/v1/auth/logout/").status_code == 204
    assert api(first).get(API).status_code == 401
    assert api(second).get(API).status_code == 200
    assert api(second).post("/api/v1/auth/logoutall/").status_code == 204
    assert api(third).get(API).status_code == 401
    assert not ApiToken.objects.exists()
