"""Celery Beat's persistent scheduler, made to start again over a schedule file cut short.

Beat keeps each entry's last run time in a shelve file (CELERY_BEAT_SCHEDULE_FILENAME). A Beat killed
while writing it (a SIGKILL after a shutdown grace, a power cut) can leave an entry that unpickles to
nothing, and Celery 5.6's PersistentScheduler then fails at every start (`EOFError: Ran out of input`):
no more escalations, sweeps or retries until someone deletes the file. The file holds only the last run
times of idempotent sweepers, so starting afresh costs at most one early run of each.
"""

import pickle

from celery.beat import PersistentScheduler


class Scheduler(PersistentScheduler):
    def _create_schedule(self) -> None:
        try:
            super()._create_schedule()
        except (EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, ValueError) as exc:
            # Celery removes the file, opens a new one and logs the error; then the usual setup.
            self._store = self._destroy_open_corrupted_schedule(exc)
            super()._create_schedule()
