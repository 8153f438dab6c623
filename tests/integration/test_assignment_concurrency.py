"""Twenty studies assigned at once by two worker processes: nobody is pushed past capacity."""

from datetime import time

import pytest
from django.contrib.auth.models import User
from django.db.models import Count

from apps.pipeline.chains import chain_start
from apps.reading.models import Assignment, Radiologist, Shift
from apps.studies.models import Stage, Study

from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_twenty_studies_assigned_in_parallel_by_two_workers_push_nobody_past_capacity(start_worker):
    for name in ("ann", "bob", "cid"):
        r = Radiologist.objects.create(
            user=User.objects.create(username=name), display_name=name, specialty="neuroradiology", capacity=5.0
        )
        Shift.objects.create(radiologist=r, weekdays="mon,tue,wed,thu,fri,sat,sun", start=time(0), end=time(23, 59))
    studies = [
        Study.objects.create(study_instance_uid=f"1.2.{n}", specialty="neuroradiology", stage=Stage.ROUTED)
        for n in range(20)
    ]
    start_worker()
    start_worker(purge=False)
    for study in studies:
        assert chain_start(study.pk, "assign")

    def settled():
        waiting = Study.objects.filter(stage__in=[Stage.ROUTED, Stage.ASSIGNED]).count()
        return waiting == 0

    wait_until(settled, timeout=60, interval=0.5, what="every study to be assigned or left unassigned")
    per_reader = dict(
        Assignment.objects.filter(status__in=Assignment.OPEN)
        .values_list("radiologist__display_name")
        .annotate(n=Count("id"))
    )
    assert per_reader == {"ann": 5, "bob": 5, "cid": 5}
    assert Study.objects.filter(stage=Stage.UNASSIGNED).count() == 5
    assert Study.objects.filter(stage=Stage.NOTIFIED).count() == 15


def test_assignments_racing_in_threads_push_nobody_past_capacity():
    """Twenty assignments released at one instant, each on its own database connection: without the row
    lock on the readers, several read the same open work and overfill a reader (checked by hand)."""
    import threading

    from django.db import connection

    from apps.reading.services import study_assign

    for name in ("ann", "bob"):
        r = Radiologist.objects.create(
            user=User.objects.create(username=name), display_name=name, specialty="neuroradiology", capacity=3.0
        )
        Shift.objects.create(radiologist=r, weekdays="mon,tue,wed,thu,fri,sat,sun", start=time(0), end=time(23, 59))
    ids = [
        Study.objects.create(study_instance_uid=f"2.2.{n}", specialty="neuroradiology", stage=Stage.ROUTED).pk
        for n in range(20)
    ]
    barrier = threading.Barrier(len(ids))

    def assign(study_id: int) -> None:
        try:
            barrier.wait(timeout=30)
            study_assign(study_id=study_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=assign, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    per_reader = dict(
        Assignment.objects.filter(status__in=Assignment.OPEN)
        .values_list("radiologist__display_name")
        .annotate(n=Count("id"))
    )
    assert per_reader == {"ann": 3, "bob": 3}
