"""The worklist in a real headless Chromium: log in, see only one's own queue, acknowledge a STAT study,
watch it move; a new STAT study appears without a reload. A screenshot is kept in tests/artifacts/."""

from datetime import time, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.reading.models import Assignment, Radiologist, Shift
from apps.studies.models import Stage, Study

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: make test installs it (apt-get install chromium)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def reader(name: str) -> Radiologist:
    user = User.objects.create_user(name, f"{name}@example.org", "correct horse")
    r = Radiologist.objects.create(user=user, display_name=name.title(), specialty="neuroradiology")
    Shift.objects.create(radiologist=r, weekdays="mon,tue,wed,thu,fri,sat,sun", start=time(0), end=time(23, 59))
    return r


def assign(r: Radiologist, accession: str, priority: str) -> Assignment:
    now = timezone.now()
    study = Study.objects.create(
        study_instance_uid=f"1.2.{accession[-3:]}",
        accession_number=accession,
        modality="CT",
        body_part="HEAD",
        priority=priority,
        stage=Stage.NOTIFIED,
        specialty="neuroradiology",
        received_at=now,
    )
    return Assignment.objects.create(
        study=study,
        radiologist=r,
        assigned_at=now,
        acknowledge_due_at=now + timedelta(minutes=5 if priority == "STAT" else 240),
    )


def log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/worklist/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "correct horse")
    page.click("button[type=submit]")
    page.wait_for_selector("table#worklist")


def test_a_reader_sees_only_their_queue_acknowledges_a_stat_and_sees_a_new_one_arrive(live_server, browser):
    ann, bob = reader("ann"), reader("bob")
    assign(ann, "ACC-R01", "ROUTINE")
    stat = assign(ann, "ACC-S02", "STAT")
    assign(bob, "ACC-B03", "ROUTINE")

    page = browser.new_page()
    log_in(page, live_server.url, "ann")
    rows = page.locator("tbody#rows tr")
    assert rows.count() == 2
    assert rows.nth(0).inner_text().startswith("STAT")  # STAT first
    assert "ACC-B03" not in page.content()  # another reader's study never shows

    page.locator(f"tr[data-assignment='{stat.pk}'] button:has-text('Acknowledge')").click()
    page.wait_for_selector(f"tr[data-assignment='{stat.pk}'] td.status:has-text('Acknowledged')")
    assert Assignment.objects.get(pk=stat.pk).status == "acknowledged"

    assign(ann, "ACC-S04", "STAT")  # a new STAT study while the page is open
    page.wait_for_selector("tr:has-text('ACC-S04')", timeout=15000)
    assert page.is_visible("#stat-banner")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)
    assert AuditEvent.objects.filter(username="ann", action="worklist.view").exists()
    assert not AuditEvent.objects.filter(username="ann", study_instance_uid="1.2.B03").exists()


def test_another_readers_assignment_cannot_be_acted_on(live_server, browser):
    ann, bob = reader("ann"), reader("bob")
    theirs = assign(bob, "ACC-B05", "STAT")
    assign(ann, "ACC-A06", "ROUTINE")
    page = browser.new_page()
    log_in(page, live_server.url, "ann")
    token = page.eval_on_selector("input[name=csrfmiddlewaretoken]", "e => e.value")
    response = page.request.post(
        f"{live_server.url}/worklist/{theirs.pk}/acknowledge/",
        headers={"X-CSRFToken": token, "Referer": f"{live_server.url}/worklist/"},
    )
    assert response.status == 404
    assert Assignment.objects.get(pk=theirs.pk).status == "assigned"


def test_an_unattended_worklist_goes_back_to_the_login_page_when_its_session_idles_out(
    live_server, browser, settings, monkeypatch
):
    """The 5-second poll is background: it neither keeps the session alive nor shows a login form in the table."""
    settings.SESSION_IDLE_TIMEOUT = 60
    start = timezone.now()
    clock = {"now": start}
    monkeypatch.setattr("apps.core.clock.now", lambda: clock["now"])
    assign(reader("ann"), "ACC-I07", "ROUTINE")
    page = browser.new_page()
    log_in(page, live_server.url, "ann")

    clock["now"] = start + timedelta(seconds=50)
    with page.expect_response(lambda r: "partial=1" in r.url, timeout=15000) as polled:
        pass
    assert polled.value.status == 200 and "/worklist/" in page.url
    clock["now"] = start + timedelta(seconds=70)  # 70 s after the login, 20 s after that poll
    page.wait_for_url("**/accounts/login/**", timeout=15000)
    assert page.is_visible("input[name=password]") and "ACC-I07" not in page.content()
