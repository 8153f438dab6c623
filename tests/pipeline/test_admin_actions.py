"""The domains' admin actions that let a study go on reach the pipeline through apps.core.signals: each app
registers its own models, and only the pipeline starts work."""

import pytest

from apps.pipeline import receivers
from apps.routing.models import RoutingDecision
from apps.studies.models import QualityAssessment, Stage, Study

pytestmark = pytest.mark.django_db


@pytest.fixture
def started(monkeypatch) -> list[tuple[int, str]]:
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(receivers, "chain_start", lambda study_id, step: calls.append((study_id, step)) or True)
    return calls


def test_releasing_a_held_study_starts_its_routing(admin_client, started):
    study = Study.objects.create(study_instance_uid="1.2.3", stage=Stage.HELD)
    QualityAssessment.objects.create(study=study, verdict="held")

    admin_client.post("/admin/studies/heldstudy/", {"action": "release", "_selected_action": [study.pk]})

    assert started == [(study.pk, "route")]
    study.refresh_from_db()
    assert study.stage == Stage.CHECKED


def test_routing_an_unrouted_study_again_starts_its_routing(admin_client, started):
    study = Study.objects.create(study_instance_uid="1.2.4", stage=Stage.ROUTED)
    decision = RoutingDecision.objects.create(study=study, unrouted=True)

    admin_client.post("/admin/routing/routingdecision/", {"action": "route_again", "_selected_action": [decision.pk]})

    assert started == [(study.pk, "route")]
