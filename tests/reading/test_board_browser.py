"""The supervisor board in a real Chromium: reassigning from it goes through the reassignment service,
audited, and both readers' open worklists follow by themselves; a page whose push stream is cut, or that the
server has no room for, polls."""

import pytest

from apps.audit.models import AuditEvent
from apps.reading.models import Assignment

from .pages import assign, log_in, reader, supervisor

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_supervisor_reassigns_a_waiting_stat_from_the_board_and_both_worklists_follow(live_server, new_context):
    ann, bob = reader("ann"), reader("bob")
    stat = assign(ann, "ACC-S11", "STAT")
    supervisor("sue")
    anns, bobs, board = (new_context().new_page() for _ in range(3))
    log_in(anns, live_server.url, "ann")
    log_in(bobs, live_server.url, "bob")
    log_in(board, live_server.url, "sue", landing="/board/", ready="#board-live")
    anns.wait_for_selector("tr[data-accession='ACC-S11']")
    assert "ACC-S11" not in bobs.inner_text("tbody#rows")
    waiting = board.locator("#stat-waiting tr[data-accession='ACC-S11']")
    assert "Ann" in waiting.inner_text() and "left" in waiting.inner_text()  # its timer ticks

    waiting.locator("button[data-action='reassign']").click()
    board.wait_for_selector("#stat-waiting tr[data-accession='ACC-S11']:has-text('Bob')")
    bobs.wait_for_selector("tr[data-accession='ACC-S11']", timeout=3000)
    anns.wait_for_selector("tr[data-accession='ACC-S11']", state="detached", timeout=3000)
    assert bobs.is_visible("#stat-banner")  # it is a new STAT study for Bob
    assert Assignment.objects.get(pk=stat.pk).status == "cancelled"
    assert Assignment.objects.get(study=stat.study, status="assigned").radiologist == bob
    assert AuditEvent.objects.filter(username="sue", action="worklist.reassign", study=stat.study).exists()
    bobs_row = board.inner_text(f"#readers tr[data-reader='{bob.pk}']").split("\t")
    assert bobs_row[2] == "Yes" and bobs_row[3] == "1"  # on shift now; Bob's open work


def test_a_page_whose_push_stream_is_cut_polls_its_rows(live_server, context, settings):
    settings.WORKLIST_FALLBACK_POLL = 1.0
    ann = reader("ann")
    assign(ann, "ACC-R21", "ROUTINE")
    page = context.new_page()
    page.route("**/worklist/events/", lambda route: route.abort())  # a proxy that drops the stream
    log_in(page, live_server.url, "ann")
    page.wait_for_selector("#live-status:has-text('polling')", timeout=10000)

    assign(ann, "ACC-S22", "STAT")
    page.wait_for_selector("tr[data-accession='ACC-S22']", timeout=5000)
    assert page.is_visible("#stat-banner")


def test_a_page_the_server_has_no_room_to_stream_to_polls_its_rows(live_server, context, settings):
    """Every push place of the web process taken (WORKLIST_PUSH_STREAMS): the stream is refused (204), and
    the page polls its rows instead of holding a thread the other requests need."""
    settings.WORKLIST_FALLBACK_POLL = 1.0
    settings.WORKLIST_PUSH_STREAMS = 0
    ann = reader("ann")
    assign(ann, "ACC-R31", "ROUTINE")
    page = context.new_page()
    refusals = []
    page.on("response", lambda r: r.url.endswith("/worklist/events/") and refusals.append(r.status))
    log_in(page, live_server.url, "ann")
    page.wait_for_selector("#live-status:has-text('polling')", timeout=10000)
    assert refusals and set(refusals) == {204}

    assign(ann, "ACC-S32", "STAT")
    page.wait_for_selector("tr[data-accession='ACC-S32']", timeout=5000)
    assert page.is_visible("#stat-banner")


def test_a_rows_fetch_that_fails_is_asked_again_and_the_page_catches_up(live_server, context):
    """The stream tells of a change once: a fetch of the rows that fails (a network error, a server busy) is
    tried again, and the page does not take the change's marker for its own until it shows the rows (it used to,
    and then stayed stale until the next change)."""
    ann = reader("ann")
    assign(ann, "ACC-R41", "ROUTINE")
    page = context.new_page()
    log_in(page, live_server.url, "ann")
    failed = []

    def fail_the_first(route):
        if failed:
            route.continue_()
        else:
            failed.append(route.request.url)
            route.abort()

    page.route("**/worklist/rows/", fail_the_first)
    assign(ann, "ACC-S42", "STAT")
    page.wait_for_selector("tr[data-accession='ACC-S42']", timeout=5000)
    assert len(failed) == 1
