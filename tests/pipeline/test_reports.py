"""Reports, the timeline, the dashboard and a study's status take a fixed number of queries, however many
studies, deliveries, instances or assignments they cover."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.pipeline.reports import dashboard, routing_report, study_timeline
from apps.pipeline.selectors import study_status
from apps.reading.models import Assignment, Radiologist, SlaEvent
from apps.routing.models import Delivery, DeliveryItem, Destination, RoutingDecision
from apps.studies.models import Instance, ReceivedInstance, Series, Study

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def studies(count: int, *, instances: int = 1, assignments: int = 1) -> list[Study]:
    """`count` studies received today, each routed to two destinations, read and reported."""
    destinations = [
        Destination.objects.get_or_create(name=n, defaults={"ae_title": n.upper(), "host": "127.0.0.1", "port": 104})[0]
        for n in ("pacs", "archive")
    ]
    reader = Radiologist.objects.filter(display_name="R").first() or Radiologist.objects.create(
        user=get_user_model().objects.create_user("reader"), display_name="R", specialty="body"
    )
    made = []
    for _ in range(count):
        uid = f"1.2.3.{Study.objects.count() + 1}"
        study = Study.objects.create(study_instance_uid=uid, received_at=NOW - timedelta(hours=1), priority="STAT")
        series = Series.objects.create(study=study, series_instance_uid=f"{uid}.1")
        rows = []
        for i in range(instances):
            received = ReceivedInstance.objects.create(
                sop_instance_uid=f"{uid}.1.{i}", study_instance_uid=uid, path="x", size=1, received_at=NOW
            )
            rows.append(
                Instance.objects.create(
                    study=study,
                    series=series,
                    received=received,
                    sop_instance_uid=received.sop_instance_uid,
                    path="x",
                    size=1,
                    sha256="0",
                )
            )
        RoutingDecision.objects.create(study=study, destinations=["pacs", "archive"], decided_at=NOW)
        for destination in destinations:
            delivery = Delivery.objects.create(study=study, destination=destination, state="delivered", created_at=NOW)
            DeliveryItem.objects.bulk_create(
                DeliveryItem(delivery=delivery, instance=i, state="delivered") for i in rows
            )
        for _ in range(assignments):
            assignment = Assignment.objects.create(
                study=study,
                radiologist=reader,
                status="completed",
                assigned_at=NOW,
                completed_at=NOW,
                acknowledge_due_at=NOW,
                report_due_at=NOW,
            )
            SlaEvent.objects.create(assignment=assignment, kind="ack_at_risk", due_at=NOW)
        made.append(study)
    return made


def queries(call) -> int:
    with CaptureQueriesContext(connection) as captured:
        call()
    return len(captured)


def test_the_routing_report_and_the_dashboard_take_as_many_queries_for_50_studies_as_for_1():
    studies(1)
    period = {"start": NOW - timedelta(days=1), "end": NOW + timedelta(days=1)}
    one = (queries(lambda: routing_report(**period)), queries(lambda: dashboard(now=NOW, days=14)))
    studies(49)

    fifty = (queries(lambda: routing_report(**period)), queries(lambda: dashboard(now=NOW, days=14)))

    assert routing_report(**period)["studies"] == 50
    assert fifty == one


def test_a_studys_status_and_timeline_take_as_many_queries_for_50_instances_and_3_assignments_as_for_1():
    [small] = studies(1)
    [large] = studies(1, instances=50, assignments=3)

    assert queries(lambda: study_status(study_instance_uid=large.study_instance_uid)) == queries(
        lambda: study_status(study_instance_uid=small.study_instance_uid)
    )
    assert queries(lambda: study_timeline(study_id=large.pk)) == queries(lambda: study_timeline(study_id=small.pk))
    status = study_status(study_instance_uid=large.study_instance_uid)
    assert [(d["instances"], d["delivered"]) for d in status["deliveries"]] == [(50, 50), (50, 50)]
    assert sum(1 for e in study_timeline(study_id=large.pk) if e[1] == "SLA") == 3


def test_chart_axes_end_on_round_numbers():
    from apps.pipeline.reports import _axis

    assert _axis(7.3, False) == (8.0, [0, 2, 4, 6, 8])
    assert _axis(130, False) == (150.0, [0, 50, 100, 150])
    assert _axis(0.42, False) == (0.6, [0, 0.2, 0.4, 0.6])
    assert _axis(37, True) == (100.0, [0, 25, 50, 75, 100])
    assert _axis(0, False) == (1.0, [0, 1])
    assert _axis(1, False, counts=True) == (1, [0, 1])  # no quarter deliveries
