"""Every page against every role, the dashboard's charts, the study timeline, and admin audit events."""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.reading.models import Assignment
from apps.routing.models import Delivery

from .test_access import ROLES, world  # noqa: F401

pytestmark = pytest.mark.django_db


def client_for(role: str) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(User.objects.get(username=role))
    return client


EXPECTED = {
    # page: status per role (302: to the login page)
    "/worklist/": {
        "anonymous": 302,
        "reader_a": 200,
        "reader_b": 200,
        "supervisor": 200,
        "integration": 403,
        "admin": 200,
        "no_role": 403,
    },
    "/dashboard/": {
        "anonymous": 302,
        "reader_a": 403,
        "reader_b": 403,
        "supervisor": 200,
        "integration": 403,
        "admin": 200,
        "no_role": 403,
    },
    "/board/": {
        "anonymous": 302,
        "reader_a": 403,
        "reader_b": 403,
        "supervisor": 200,
        "integration": 403,
        "admin": 200,
        "no_role": 403,
    },
    "/admin/studies/study/": {
        "anonymous": 302,
        "reader_a": 302,
        "reader_b": 302,
        "supervisor": 302,
        "integration": 302,
        "admin": 200,
        "no_role": 302,
    },
    "/admin/audit/auditevent/": {
        "anonymous": 302,
        "reader_a": 302,
        "reader_b": 302,
        "supervisor": 302,
        "integration": 302,
        "admin": 200,
        "no_role": 302,
    },
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", list(EXPECTED))
def test_every_page_for_every_role(world, role, page):  # noqa: F811
    assert client_for(role).get(page).status_code == EXPECTED[page][role]


def test_a_reader_s_worklist_shows_only_their_studies(world):  # noqa: F811
    page = client_for("reader_a").get("/worklist/").content.decode()
    assert "ACC-A" in page and "ACC-B" not in page
    everything = client_for("supervisor").get("/worklist/").content.decode()
    assert "ACC-A" in everything and "ACC-B" in everything


def test_the_dashboard_draws_its_charts_on_the_server(world):  # noqa: F811
    Assignment.objects.filter(pk=world["assignment_a"].pk).update(status="completed", completed_at=timezone.now())
    Delivery.objects.update(state="delivered")
    page = client_for("admin").get("/dashboard/").content.decode()
    assert page.count("<svg") == 4  # turnaround, deliveries, open work, SLA compliance by day
    assert "pacs / delivered" in page and "<script" not in page


def test_the_dashboard_charts_have_axes_titles_and_a_chosen_period(world):  # noqa: F811
    Assignment.objects.filter(pk=world["assignment_a"].pk).update(status="completed", completed_at=timezone.now())
    Delivery.objects.update(state="delivered")
    today = timezone.now().date()
    page = client_for("admin").get(f"/dashboard/?start={today:%Y-%m-%d}&end={today:%Y-%m-%d}").content.decode()
    assert page.count('<g class="axis">') == 4
    assert "Median minutes from receipt to report (min)" in page and "Deliveries created in the period" in page
    assert f'value="{today:%Y-%m-%d}"' in page and "pacs / delivered" in page
    earlier = client_for("admin").get("/dashboard/?start=2001-01-01&end=2001-01-31").content.decode()
    assert "pacs / delivered" not in earlier and "No data in this period." in earlier
    bad = client_for("admin").get("/dashboard/?start=yesterday").content.decode()
    assert "Dates are YYYY-MM-DD." in bad


def test_the_timeline_shows_milliseconds_and_the_gap_between_steps(world):  # noqa: F811
    study = world["assignment_a"].study
    page = client_for("admin").get(f"/admin/studies/{study.pk}/timeline/").content.decode()
    import re

    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}</td>", page)
    assert re.search(r'class="gap">\+\d+\.\d{3} s<', page)


def test_the_timeline_and_every_admin_view_of_a_study_are_audited(world):  # noqa: F811
    study = world["assignment_a"].study
    admin = client_for("admin")
    page = admin.get(f"/admin/studies/{study.pk}/timeline/").content.decode()
    assert "assigned" in page and "READER_A" in page
    admin.get(f"/admin/studies/study/{study.pk}/change/")
    admin.get("/admin/studies/study/")
    actions = list(AuditEvent.objects.filter(username="admin").values_list("action", flat=True))
    assert sorted(set(actions)) == ["admin.studies.detail", "admin.studies.list", "admin.studies.timeline"]
    assert actions.count("admin.studies.list") == 2  # one per study shown
