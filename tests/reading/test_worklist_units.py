"""The worklist's pure pieces: filter parsing, the push stream's events, the change marker."""

import logging
from datetime import UTC, timedelta

import pytest
from django.http import QueryDict
from django.utils import timezone

from apps.reading import push, selectors, services
from apps.reading.models import Assignment, SlaEvent
from apps.reading.worklist_filters import WorklistFilters, filters_parse
from apps.studies.models import Stage, Study

from .pages import assign, reader, supervisor


def test_filters_are_parsed_from_a_form_and_cleaned():
    form = QueryDict(
        "priority=stat&priority=ROUTINE&priority=BOGUS&status=in_progress&status=done"
        "&modality=%20ct%20&institution=North%20%20Clinic&q=%20A-17%20"
    )
    filters = filters_parse(form)
    assert filters == WorklistFilters(
        priority=("STAT", "ROUTINE"), status=("in_progress",), modality="CT", institution="North Clinic", q="A-17"
    )
    assert filters.active


def test_stored_filters_round_trip_and_unknown_keys_are_dropped():
    stored = {"priority": ["URGENT"], "status": "assigned", "q": "PID-1", "colour": "red"}
    filters = filters_parse(stored)
    assert filters_parse(filters.as_dict()) == filters
    assert filters.as_dict() == {
        "priority": ["URGENT"],
        "status": ["assigned"],
        "modality": "",
        "institution": "",
        "q": "PID-1",
    }
    assert not filters_parse({}).active


def test_a_search_is_never_in_a_repr_and_is_bounded():
    filters = filters_parse({"q": "PID-SECRET" + "x" * 100})
    assert "PID-SECRET" not in repr(filters)
    assert len(filters.q) == 64


def test_the_stream_says_retry_then_the_marker_then_only_changes_and_ends_after_its_lifetime():
    markers = iter(["m1", "m1", "m1", "m2", "m2", "m2", "m2", "m2", "m2"])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    events = list(
        push.marker_events(
            lambda: next(markers), tick=0.25, lifetime=2.0, keepalive=1.0, sleep=sleep, monotonic=lambda: now[0]
        )
    )
    assert events[0] == f"retry: {push.RETRY_MS}\n\n"
    assert events[1] == "event: changed\ndata: m1\n\n"
    assert events[2] == "event: changed\ndata: m2\n\n"  # at 0.75 s
    assert events[3:] == [": keepalive\n\n"]  # 1 s after the last write; then the 2 s lifetime ends it
    assert now[0] == 2.0


def test_a_held_stream_is_counted_while_it_lasts_and_closed_however_it_ends():
    closed = []
    before = push.streams_open()
    stream = push.admit(iter(["a", "b"]), on_close=lambda: closed.append(True))
    assert next(stream) == "a" and push.streams_open() == before + 1
    stream.close()  # the client went away
    assert push.streams_open() == before and closed == [True]
    stream.close()  # the server closes it once more: given back once
    assert push.streams_open() == before and closed == [True]

    ended = push.admit(iter(["a"]), on_close=lambda: closed.append("ended"))
    assert list(ended) == ["a"]  # its lifetime ran out
    assert push.streams_open() == before and closed == [True, "ended"]


def test_streams_are_admitted_up_to_the_limit_and_a_place_comes_back_even_from_a_stream_never_read():
    before = push.streams_open()
    limit = before + 2
    first = push.admit(iter(["a"]), on_close=lambda: None, limit=limit)
    second = push.admit(iter(["a"]), on_close=lambda: None, limit=limit)
    assert first is not None and second is not None
    assert push.admit(iter(["a"]), on_close=lambda: None, limit=limit) is None  # full
    second.close()  # a response closed before its first write
    third = push.admit(iter(["a"]), on_close=lambda: None, limit=limit)
    assert third is not None and push.streams_open() == limit
    first.close()
    third.close()
    assert push.streams_open() == before

    dropped = push.admit(iter(["a"]), on_close=lambda: None, limit=limit)
    assert push.streams_open() == before + 1
    del dropped  # a response dropped without being closed (the test client's, say): its place comes back too
    assert push.streams_open() == before


def test_refusals_are_logged_once_a_minute_with_their_count(caplog, monkeypatch):
    monkeypatch.setattr(push, "_refused", 0)
    monkeypatch.setattr(push, "_refused_logged_at", -push.REFUSALS_LOGGED_EVERY)
    now = [1000.0]
    with caplog.at_level(logging.WARNING, logger="apps.reading.push"):
        for _ in range(5):
            push.refused(limit=8, monotonic=lambda: now[0])
        now[0] += push.REFUSALS_LOGGED_EVERY
        push.refused(limit=8, monotonic=lambda: now[0])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("worklist push: 1 page(s) refused") and lines[1].startswith("worklist push: 5 page(s)")


@pytest.mark.django_db
def test_the_marker_changes_with_what_the_page_shows_and_only_with_that():
    ann, bob = reader("ann"), reader("bob")
    sue = supervisor()
    mine = assign(ann, "ACC-M01", "ROUTINE")

    def marker(user, everything=False):
        return selectors.worklist_marker(user=user, sees_everything=everything)

    before, board_before = marker(ann.user), marker(sue, True)
    theirs = assign(bob, "ACC-T02", "STAT")
    assert marker(ann.user) == before  # another reader's new study is not news here
    assert marker(sue, True) != board_before
    services.assignment_acknowledge(assignment_id=mine.pk)
    after_ack = marker(ann.user)
    assert after_ack != before
    SlaEvent.objects.create(assignment=mine, kind="report_at_risk", due_at=timezone.now())
    assert marker(ann.user) != after_ack
    board = marker(sue, True)
    Study.objects.filter(pk=theirs.study_id).update(stage=Stage.HELD)
    Study.objects.create(study_instance_uid="1.2.9", stage=Stage.UNASSIGNED)
    assert marker(sue, True) != board
    bobs = marker(bob.user)
    Assignment.objects.filter(pk=theirs.pk).update(updated_at=timezone.now() + timedelta(seconds=1))
    assert marker(bob.user) != bobs  # late instances arrived for it


@pytest.mark.django_db
def test_filters_narrow_the_worklist_and_search_matches_accession_or_whole_patient_id():
    ann = reader("ann")
    assign(ann, "ACC-A01", "STAT", modality="CT", institution="North", patient_id="P1234")
    assign(ann, "ACC-B02", "ROUTINE", modality="MR", institution="South", patient_id="P9")
    now = timezone.now()

    def shown(**form):
        rows = selectors.worklist(user=ann.user, sees_everything=False, now=now, filters=filters_parse(form))["rows"]
        return [row["study"].accession_number for row in rows]

    assert shown() == ["ACC-A01", "ACC-B02"]
    assert shown(priority=["STAT"]) == ["ACC-A01"]
    assert shown(modality="mr") == ["ACC-B02"]
    assert shown(institution="nor") == ["ACC-A01"]
    assert shown(q="b02") == ["ACC-B02"]
    assert shown(q="P9") == ["ACC-B02"]
    assert shown(q="P12") == []  # a patient id is matched whole, never by prefix
    assert shown(status=["acknowledged"]) == []


@pytest.mark.django_db(transaction=True)  # a stream's end closes the database connection, as in a server
def test_the_push_endpoint_answers_204_while_every_place_is_taken_and_streams_again_once_one_is_free(client, settings):
    ann = reader("ann")
    client.force_login(ann.user)
    settings.WORKLIST_PUSH_STREAMS = push.streams_open() + 1
    first = client.get("/worklist/events/")
    assert first.status_code == 200 and first.streaming
    refused = client.get("/worklist/events/")
    assert refused.status_code == 204 and not refused.streaming  # SSE: do not reconnect (the page polls)
    first.close()  # the server ends the first (its client went away), without a write
    again = client.get("/worklist/events/")
    assert again.status_code == 200 and again.streaming
    again.close()


@pytest.mark.django_db
def test_the_board_says_who_is_on_shift_now_and_its_marker_changes_when_a_shift_opens_or_a_status_does():
    from datetime import datetime, time

    from apps.reading.models import Radiologist, Shift

    sue = supervisor()
    day = reader("day")  # on shift around the clock (tests' reader)
    night = reader("night")
    night.shifts.all().delete()
    Shift.objects.create(radiologist=night, weekdays="mon,tue,wed,thu,fri,sat,sun", start=time(22), end=time(6))
    noon = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    late = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)

    def on_shift(at):
        return {r["reader"].display_name: r["on_shift"] for r in selectors.board(now=at)["readers"]}

    assert on_shift(noon) == {"Day": True, "Night": False}
    assert on_shift(late) == {"Day": True, "Night": True}

    def marker(at):
        return selectors.worklist_marker(user=sue, sees_everything=True, now=at)

    assert marker(noon) == marker(noon + timedelta(minutes=5))  # nothing changed
    assert marker(noon) != marker(late)  # the night shift opened: the board has news, no row changed
    before = marker(noon)
    own = selectors.worklist_marker(user=day.user, sees_everything=False)
    Radiologist.objects.filter(pk=night.pk).update(status=Radiologist.Status.OFFLINE)
    assert marker(noon) != before
    # A reader's own worklist does not show the readers: another's status is no news there.
    assert selectors.worklist_marker(user=day.user, sees_everything=False) == own
