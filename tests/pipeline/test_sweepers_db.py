"""Beat's sweepers while the database is away: one warning per tick, no error, nothing raised."""

import logging

import pytest
from django.db import OperationalError

from apps.pipeline import services, tasks


def test_a_sweeper_skips_its_tick_with_a_warning_when_the_database_is_away(monkeypatch, caplog):
    def gone():
        raise OperationalError("connection refused")

    monkeypatch.setattr(services, "reconcile_targets", gone)
    with caplog.at_level(logging.WARNING, logger="apps.pipeline.tasks"):
        tasks.reconcile()  # the task body, as a worker runs it
    assert [r.getMessage() for r in caplog.records] == ["reconcile skipped: database unavailable (OperationalError)"]


def test_other_errors_still_raise(monkeypatch):
    def broken():
        raise ValueError("a bug")

    monkeypatch.setattr(services, "reconcile_targets", broken)
    with pytest.raises(ValueError):  # a bug in a sweeper is not swallowed
        tasks.reconcile()
