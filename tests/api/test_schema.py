"""The OpenAPI schema validates, and a property-based run against it (schemathesis, through the WSGI
application with a supervisor's token and with a reader's) finds no server error."""

import pytest
import schemathesis
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from hypothesis import HealthCheck, settings

from apps.accounts.services import token_issue
from routerproject.wsgi import application

from .test_access import world  # noqa: F401 - the same studies, assignments and users


def test_the_schema_validates(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    assert "openapi: 3" in (tmp_path / "schema.yml").read_text()


@pytest.fixture
def api_schema():
    return schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def tokens(world):  # noqa: F811
    supervisor = User.objects.get(username="supervisor")
    if not supervisor.groups.filter(name="supervisors").exists():
        supervisor.groups.add(Group.objects.get(name="supervisors"))
    return [
        token_issue(user=User.objects.get(username=name), name="schemathesis")[1] for name in ("supervisor", "reader_a")
    ]


# Transactional: each WSGI request ends by closing the database connection, as in production.
@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_anywhere_in_the_api(case, tokens):
    for token in tokens:
        response = case.call(headers={"Authorization": f"Token {token}"})
        assert response.status_code < 500, (case.method, case.formatted_path, response.status_code)
