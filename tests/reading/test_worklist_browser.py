"""The worklist in a real headless Chromium: log in, see only one's own queue, acknowledge a STAT study,
watch it move; a new STAT study appears without a reload; an unattended page goes back to the login form."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.reading.models import Assignment

from .pages import ARTIFACTS, assign, log_in, reader

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_reader_sees_only_their_queue_acknowledges_a_stat_and_sees_a_new_one_arrive(live_server, context):
    ann, bob = reader("ann"), reader("bob")
    assign(ann, "ACC-R01", "ROUTINE")
    stat = assign(ann, "ACC-S02", "STAT")
    assign(bob, "ACC-B03", "ROUTINE")

    page = context.new_page()
    log_in(page, live_server.url, "ann")
    rows = page.locator("tbody#rows tr")
    assert rows.count() == 2
    assert rows.nth(0).inner_text().startswith("STAT")  # STAT first
    assert "ACC-B03" not in page.content()  # another reader's study never shows

    page.locator(f"tr[data-assignment='{stat.pk}'] button:has-text('Acknowledge')").click()
    page.wait_for_selector(f"tr[data-assignment='{stat.pk}'] td.status:has-text('Acknowledged')")
    assert Assignment.objects.get(pk=stat.pk).status == "acknowledged"
    assert AuditEvent.objects.filter(username="ann", action="worklist.acknowledge", study=stat.study).exists()

    assign(ann, "ACC-S04", "STAT")  # a new STAT study while the page is open
    page.wait_for_selector("tr:has-text('ACC-S04')", timeout=5000)
    assert page.is_visible("#stat-banner")
    assert page.title().startswith("NEW STAT")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)
    assert AuditEvent.objects.filter(username="ann", action="worklist.view").exists()
    assert not AuditEvent.objects.filter(username="ann", study_instance_uid="1.2.B03").exists()


def test_another_readers_assignment_cannot_be_acted_on(live_server, context):
    ann, bob = reader("ann"), reader("bob")
    theirs = assign(bob, "ACC-B05", "STAT")
    assign(ann, "ACC-A06", "ROUTINE")
    page = context.new_page()
    log_in(page, live_server.url, "ann")
    token = page.eval_on_selector("input[name=csrfmiddlewaretoken]", "e => e.value")
    for action in ("acknowledge", "open"):
        response = page.request.post(
            f"{live_server.url}/worklist/{theirs.pk}/{action}/",
            headers={"X-CSRFToken": token, "Referer": f"{live_server.url}/worklist/"},
        )
        assert response.status == 404
    assert Assignment.objects.get(pk=theirs.pk).status == "assigned"


def test_an_unattended_worklist_goes_back_to_the_login_page_when_its_session_idles_out(
    live_server, context, settings, monkeypatch
):
    """The push stream is background: its reconnections neither keep the session alive nor show a login form
    in the table; the first one after the timeout brings the page back to the login form."""
    settings.SESSION_IDLE_TIMEOUT = 60
    settings.WORKLIST_PUSH_LIFETIME = 2.0  # streams end and reconnect every 2 s here (30 s in production)
    start = timezone.now()
    clock = {"now": start}
    monkeypatch.setattr("apps.core.clock.now", lambda: clock["now"])
    assign(reader("ann"), "ACC-I07", "ROUTINE")
    page = context.new_page()
    log_in(page, live_server.url, "ann")

    clock["now"] = start + timedelta(seconds=50)
    with page.expect_response(lambda r: "/worklist/events/" in r.url, timeout=15000) as reconnected:
        pass
    assert reconnected.value.status == 200 and "/worklist/" in page.url
    clock["now"] = start + timedelta(seconds=70)  # 70 s after the login, 20 s after that reconnection
    page.wait_for_url("**/accounts/login/**", timeout=15000)
    assert page.is_visible("input[name=password]") and "ACC-I07" not in page.content()
