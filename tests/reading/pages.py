"""What the worklist's browser tests share: readers, assignments, logging in, the end of a page's streams."""

import gc
from datetime import time, timedelta
from pathlib import Path

from django.contrib.auth.models import User
from django.utils import timezone

from apps.reading import push
from apps.reading.models import Assignment, Radiologist, Shift
from apps.studies.models import Stage, Study

from ..support.processes import wait_until

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSWORD = "correct horse"


def reader(name: str, *, staff: bool = False) -> Radiologist:
    user = User.objects.create_user(name, f"{name}@example.org", PASSWORD, is_staff=staff)
    r = Radiologist.objects.create(user=user, display_name=name.title(), specialty="neuroradiology")
    Shift.objects.create(radiologist=r, weekdays="mon,tue,wed,thu,fri,sat,sun", start=time(0), end=time(23, 59))
    return r


def supervisor(name: str = "sue") -> User:
    return User.objects.create_user(name, f"{name}@example.org", PASSWORD, is_staff=True)


def assign(
    r: Radiologist,
    accession: str,
    priority: str,
    *,
    modality: str = "CT",
    institution: str = "",
    patient_id: str = "",
    due_minutes: int | None = None,
) -> Assignment:
    now = timezone.now()
    study = Study.objects.create(
        study_instance_uid=f"1.2.{accession[-3:]}",
        accession_number=accession,
        patient_id=patient_id,
        modality=modality,
        body_part="HEAD",
        institution_name=institution,
        priority=priority,
        stage=Stage.NOTIFIED,
        specialty="neuroradiology",
        received_at=now,
    )
    minutes = due_minutes if due_minutes is not None else (5 if priority == "STAT" else 240)
    return Assignment.objects.create(
        study=study, radiologist=r, assigned_at=now, acknowledge_due_at=now + timedelta(minutes=minutes)
    )


def log_in(page, base: str, username: str, *, landing: str = "/worklist/", ready: str = "table#worklist") -> None:
    page.goto(f"{base}{landing}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector(ready)


def close_and_wait_for_streams(contexts) -> None:
    """Close the browser contexts, then wait until the server has ended their push streams (each holds a
    database connection, which the test database's teardown needs gone)."""
    for context in contexts:
        context.close()

    def ended() -> bool:
        # A stream's place also comes back when its response is freed unclosed: a test client's response sits
        # in a reference cycle (its .json partial), which only the cycle collector frees.
        gc.collect()
        return push.streams_open() == 0

    wait_until(ended, timeout=15, interval=0.05, what="the push streams ended")
