"""The worklist, the supervisor board, the dashboard and the login page, in both themes: axe-core (bundled
by axe-playwright-python, no network) finds no serious or critical violation; each page is kept as a
screenshot in tests/artifacts/ for a person to look at."""

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.utils import timezone

from apps.reading.models import SlaEvent, WorklistPreference
from apps.routing.models import Delivery, Destination
from apps.studies.models import Stage, Study

from .pages import ARTIFACTS, assign, log_in, reader, supervisor

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SERIOUS = ("serious", "critical")


@pytest.fixture
def audit():
    """Run axe on a page, keep its screenshot, remember what was serious; the test asserts at the end."""
    axe = Axe()
    found: dict[str, list[str]] = {}
    ARTIFACTS.mkdir(exist_ok=True)

    def run(page, name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        results = axe.run(page)
        serious = [v for v in results.response["violations"] if v["impact"] in SERIOUS]
        found[name] = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}" for v in serious
        ]

    run.found = found
    return run


def world(live_server) -> None:
    ann = reader("ann")
    stat = assign(ann, "ACC-S01", "STAT", institution="North Clinic")
    assign(ann, "ACC-U02", "URGENT", modality="MR", institution="South Hospital", due_minutes=-12)
    routine = assign(ann, "ACC-R03", "ROUTINE", institution="South Hospital", due_minutes=30)
    SlaEvent.objects.create(assignment=routine, kind="ack_at_risk", due_at=routine.acknowledge_due_at)
    assign(reader("bob"), "ACC-B04", "STAT", institution="North Clinic")
    pacs = Destination.objects.create(
        name="pacs",
        ae_title="PACS",
        host="127.0.0.1",
        port=104,
        viewer_url_template=f"{live_server.url}/viewer/?study={{StudyInstanceUID}}",
    )
    Delivery.objects.create(study=stat.study, destination=pacs, state="delivered", delivered_at=timezone.now())
    Study.objects.create(
        study_instance_uid="1.2.U05",
        accession_number="ACC-U05",
        modality="CT",
        priority="STAT",
        stage=Stage.UNASSIGNED,
        stage_detail="no eligible neuroradiology radiologist",
    )
    Study.objects.create(
        study_instance_uid="1.2.H06",
        accession_number="ACC-H06",
        modality="MR",
        stage=Stage.HELD,
        stage_detail="QC: blank image",
    )
    supervisor("sue")


def test_every_page_has_no_serious_accessibility_violation_in_either_theme(live_server, new_context, audit):
    world(live_server)
    page = new_context().new_page()
    page.goto(f"{live_server.url}/accounts/login/")
    audit(page, "login-dark")
    log_in(page, live_server.url, "ann")
    assert page.get_attribute("html", "data-theme") == "dark"
    page.wait_for_function("() => document.querySelector('td.due .clock').textContent.includes('left')")
    audit(page, "worklist-dark")
    page.keyboard.press("j")
    page.keyboard.press("?")
    audit(page, "worklist-help-dark")
    page.keyboard.press("Escape")

    with page.expect_navigation():
        page.click("#theme-toggle")
    assert page.get_attribute("html", "data-theme") == "light"
    assert WorklistPreference.objects.get(user__username="ann").theme == "light"
    audit(page, "worklist-light")
    page.keyboard.press("?")
    audit(page, "worklist-help-light")
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.click("text=Log out")
    page.goto(f"{live_server.url}/accounts/login/")
    assert page.get_attribute("html", "data-theme") == "light"  # this browser's last choice, logged out
    audit(page, "login-light")

    board = new_context().new_page()
    log_in(board, live_server.url, "sue", landing="/board/", ready="#board-live")
    board.wait_for_selector("#stat-waiting tr[data-accession='ACC-B04']")
    audit(board, "board-dark")
    board.goto(f"{live_server.url}/dashboard/")
    audit(board, "dashboard-dark")
    with board.expect_navigation():
        board.click("#theme-toggle")
    audit(board, "dashboard-light")
    board.goto(f"{live_server.url}/board/")
    audit(board, "board-light")

    assert len(audit.found) == 10
    assert {name: problems for name, problems in audit.found.items() if problems} == {}
    # The audit does find what it should: a nameless button and an image without text are critical.
    page.set_content('<html lang="en"><title>t</title><main><img src="x.png"><button></button></main></html>')
    audit(page, "axe-self-check")
    assert {p.split(" ")[0] for p in audit.found["axe-self-check"]} >= {"button-name", "image-alt"}
