"""Beat starts again over a schedule file that a crash cut short."""

import dbm

import pytest
from celery.beat import PersistentScheduler

from routerproject.beat import Scheduler
from routerproject.celery import app


def cut_short(path) -> None:
    """A schedule file whose entries unpickle to nothing, as a Beat killed mid-write leaves it."""
    with dbm.open(str(path), "c") as db:
        db[b"entries"] = b""


def test_celerys_own_scheduler_does_not_start_over_it(tmp_path):
    path = tmp_path / "celerybeat-schedule"
    cut_short(path)
    with pytest.raises(EOFError):
        PersistentScheduler(app=app, schedule_filename=str(path))


def test_ours_starts_afresh_with_every_entry(tmp_path):
    path = tmp_path / "celerybeat-schedule"
    cut_short(path)
    scheduler = Scheduler(app=app, schedule_filename=str(path))
    try:
        assert "reconcile" in app.conf.beat_schedule and "escalations-due" in app.conf.beat_schedule
        assert set(app.conf.beat_schedule) <= set(scheduler.schedule)
    finally:
        scheduler.close()
    reopened = Scheduler(app=app, schedule_filename=str(path))  # and the file it wrote is whole
    try:
        assert set(app.conf.beat_schedule) <= set(reopened.schedule)
    finally:
        reopened.close()
