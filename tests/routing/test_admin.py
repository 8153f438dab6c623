"""The routing admin: dry runs on a stored study and an uploaded file, replay of drafts, route again."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from apps.routing.models import Destination, RoutingDecision, RoutingRule, RuleCriterion
from apps.studies.models import Stage, Study

from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("admin", "admin@example.org", "pw"))
    return client


@pytest.fixture
def rules(db):
    neuro = Destination.objects.create(name="neuro", ae_title="NEURO", host="127.0.0.1", port=1)
    ct = RoutingRule.objects.create(name="CT head", priority=10)
    RuleCriterion.objects.create(rule=ct, attribute="body_part", operator="equals", value="HEAD")
    ct.destinations.add(neuro)
    draft = RoutingRule.objects.create(name="draft: everything to archive", priority=5, enabled=False)
    draft.destinations.add(Destination.objects.create(name="archive", ae_title="ARCH", host="127.0.0.1", port=2))
    return ct, draft


def test_a_dry_run_on_a_stored_study_and_on_an_uploaded_file_explains_and_writes_nothing(
    admin_client, rules, storage, tmp_path, default_mapping
):
    uid, paths = synthetic_study(tmp_path / "in", count=1, body_part="KNEE")
    url = reverse("admin:routing_dry_run")
    assert admin_client.get(url).status_code == 200
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="check")
    page = admin_client.post(url, {"study_instance_uid": uid}).content.decode()
    assert "body_part equals &#x27;HEAD&#x27; failed (study has KNEE)" in page
    _, head = synthetic_study(tmp_path / "upload", count=1, body_part="HEAD")
    with open(head[0], "rb") as fh:
        page = admin_client.post(url, {"dicom_file": fh}).content.decode()
    assert "Destinations: <strong>neuro</strong>" in page
    assert not RoutingDecision.objects.exists()


def test_replaying_a_draft_rule_lists_the_studies_that_would_have_gone_elsewhere(
    admin_client, rules, storage, tmp_path, default_mapping
):
    _, draft = rules
    for part in ("HEAD", "KNEE"):
        _, paths = synthetic_study(tmp_path / part, count=1, body_part=part)
        run_steps(receive_study(storage, paths), until="route")
    url = reverse("admin:routing_routingrule_changelist")
    page = admin_client.post(url, {"action": "replay", "_selected_action": [draft.pk]}).content.decode()
    assert "2 studies decided in the last 7 days would have gone elsewhere" in page


def test_route_again_sends_an_unrouted_study_back_to_routing(admin_client, rules, storage, tmp_path, default_mapping):
    _, paths = synthetic_study(tmp_path / "in", count=1, body_part="KNEE")
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="route")
    decision = RoutingDecision.objects.get()
    assert decision.unrouted
    RuleCriterion.objects.filter(value="HEAD").update(value="KNEE")
    RoutingRule.objects.get(name="CT head").save()
    url = reverse("admin:routing_routingdecision_changelist")
    admin_client.post(url, {"action": "route_again", "_selected_action": [decision.pk]})
    assert Study.objects.get().stage == Stage.CHECKED
    run_steps(study_id, until="route")  # what the enqueued route step does
    assert RoutingDecision.objects.get().destinations == ["neuro"]


def test_a_paused_destination_shows_why_and_resumes_from_the_admin_action_audited(admin_client, rules):
    from apps.audit.models import AuditEvent
    from apps.core import clock
    from apps.routing.services import destination_config_error_set

    neuro = Destination.objects.get(name="neuro")
    destination_config_error_set(destination_id=neuro.pk, error="TLS: certificate has expired", now=clock.now())
    page = admin_client.get(reverse("admin:routing_destination_change", args=[neuro.pk]))
    assert page.status_code == 200 and b"certificate has expired" in page.content and b"TLS CA file" in page.content

    response = admin_client.post(
        reverse("admin:routing_destination_changelist"),
        {"action": "resume", "_selected_action": [neuro.pk]},
        follow=True,
    )

    assert b"Resumed: neuro" in response.content
    assert Destination.objects.get(pk=neuro.pk).config_error == ""
    assert AuditEvent.objects.filter(action="destination_resume", detail="destination neuro").exists()
