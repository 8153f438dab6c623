"""STAT studies take their own lane: a queue of their own and workers of their own (the Procfile's
worker-stat), so a backlog of routine work in the ingest, workflow and deliver queues never delays them."""

import pytest
import redis
from django.conf import settings

from apps.configuration.services import config_import
from apps.pipeline import tasks
from apps.pipeline.chains import studies_received
from apps.studies.models import PriorityKeyword, Stage, Study
from apps.studies.services import priority_hint

from ..conftest import QUEUES
from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import storescu, synthetic_study
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
"""
ROUTINE_STUDIES = 40


def queue_length(name: str) -> int:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(name)


def test_a_stat_study_sent_behind_a_routine_backlog_is_handled_before_it(
    start_scp, start_worker, storescp, service_env, tmp_path
):
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(*QUEUES.split(","))  # what earlier tests left
    _, pacs_port, pacs_folder = storescp("PACS")
    config_import(CONFIG % {"port": pacs_port} + ACHEN_ON_SHIFT)
    _, port = start_scp()
    routine = []
    for n in range(ROUTINE_STUDIES):
        _, paths = synthetic_study(tmp_path / f"routine{n}", count=2, body_part="HEAD")
        routine += paths
    assert storescu(port, routine).returncode == 0
    stat_uid, stat_paths = synthetic_study(tmp_path / "stat", count=2, body_part="HEAD", priority="STAT")
    assert storescu(port, stat_paths).returncode == 0
    # Everything waits in the broker, the STAT study last of all: one chain per study, its first task
    # on the STAT lane because its instances said STAT at receipt.
    wait_until(
        lambda: (queue_length("ingest"), queue_length("stat")) == (ROUTINE_STUDIES, 1),
        timeout=30,
        what="every study's chain in the broker",
    )

    start_worker(purge=False)  # the backlog is the point

    final = [Stage.NOTIFIED, Stage.UNASSIGNED]
    wait_until(
        lambda: Study.objects.filter(stage__in=final).count() == ROUTINE_STUDIES + 1,
        timeout=120,
        interval=0.5,
        what="every study routed and assigned",
    )
    stat = Study.objects.get(study_instance_uid=stat_uid)
    assert stat.priority == "STAT"
    assert stat.stage == Stage.NOTIFIED
    assert stat.assignments.get().radiologist.user.username == "achen"
    done_before_stat = Study.objects.exclude(pk=stat.pk).filter(stage_changed_at__lt=stat.stage_changed_at).count()
    # In arrival order it would have been last; on its lane it finishes while the backlog is still draining.
    assert done_before_stat < ROUTINE_STUDIES // 4, f"{done_before_stat} routine studies finished before the STAT one"
    delivered = stat.deliveries.get()
    assert delivered.state == "delivered"
    # Routine deliveries run beside their studies' assign and notify steps: some may still be on the wire.
    wait_until(
        lambda: len(list(pacs_folder.iterdir())) == 2 * (ROUTINE_STUDIES + 1),
        timeout=60,
        what="every instance at the destination",
    )


def test_the_hint_at_receipt_follows_the_classification_rules():
    PriorityKeyword.objects.create(keyword="CODE STROKE", priority="STAT")
    assert priority_hint({("RequestedProcedurePriority", "STAT")}) == "STAT"
    assert priority_hint({("StudyPriorityID", "HIGH")}) == "URGENT"
    assert priority_hint({("StudyDescription", "CT HEAD code stroke")}) == "STAT"
    assert priority_hint({("SeriesDescription", "AXIAL"), ("StudyPriorityID", "LOW")}) == "ROUTINE"
    assert priority_hint(set()) == "ROUTINE"


def test_a_study_found_stat_only_at_classification_moves_to_the_stat_lane(service_env):
    """Nothing at receipt said STAT (the keyword was added since): classification moves the rest of
    the chain to the STAT lane and the routine chain stops there."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("stat", "workflow")
    study = Study.objects.create(study_instance_uid="1.2.3.4", stage=Stage.PERSISTED, study_description="STROKE CT")
    PriorityKeyword.objects.create(keyword="STROKE", priority="STAT")

    result = tasks.classify.apply(args=(study.pk,))

    assert result.successful()
    study.refresh_from_db()
    assert (study.priority, study.stage) == ("STAT", Stage.CLASSIFIED)
    assert queue_length("stat") == 1
    assert queue_length("workflow") == 0


def test_studies_received_put_only_the_stat_one_on_the_stat_lane(service_env):
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("stat", "ingest")
    studies_received({"1.2.1": {("StudyDescription", "CT HEAD")}, "1.2.2": {("RequestedProcedurePriority", "STAT")}})
    assert queue_length("stat") == 1
    assert queue_length("ingest") == 1
