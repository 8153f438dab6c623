"""An emergency purge tells staff and webhooks once per episode; the SCP asks for the purge at association
end when free space is below the emergency threshold."""

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model

from apps.notifications.models import Notification, WebhookEndpoint
from apps.pipeline import chains
from apps.pipeline.services import STORAGE_EMERGENCY_EVENT, storage_emergency_notify
from apps.routing.retention import storage_purge
from apps.studies.models import RetentionPolicy

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 2, 8, tzinfo=UTC)


def test_staff_and_webhooks_are_told_once_per_episode(settings):
    settings.STORAGE_MIN_FREE_BYTES = 1000
    RetentionPolicy.objects.create()
    get_user_model().objects.create_user("ops", email="ops@example.org", is_staff=True)
    WebhookEndpoint.objects.create(
        name="pager", url="http://127.0.0.1:9/hook", secret="s", events=STORAGE_EMERGENCY_EVENT
    )

    first = storage_emergency_notify(report=storage_purge(now=NOW, free=lambda: 10))
    again = storage_emergency_notify(report=storage_purge(now=NOW, free=lambda: 10))

    assert len(first) == 3 and again == []  # in-app, email, webhook; then nothing in the same episode
    told = Notification.objects.filter(event=STORAGE_EMERGENCY_EVENT)
    assert {n.channel for n in told} == {"in_app", "email", "webhook"}
    assert all("Doe" not in n.body for n in told)
    storage_purge(now=NOW, free=lambda: 10**9)  # space is back: the episode ends
    assert len(storage_emergency_notify(report=storage_purge(now=NOW, free=lambda: 10))) == 3


def test_the_scp_asks_for_the_purge_when_space_is_low_at_association_end(monkeypatch, settings):
    asked = []
    monkeypatch.setattr(chains, "_publish", lambda what, sig: asked.append(sig.task) or True)
    monkeypatch.setattr(chains, "_purge_asked_at", -chains.PURGE_ASK_EVERY)
    monkeypatch.setattr(chains, "free_bytes", lambda: 10**15)
    chains.studies_received({})
    assert asked == []

    monkeypatch.setattr(chains, "free_bytes", lambda: 10)
    chains.studies_received({})
    chains.studies_received({})  # within PURGE_ASK_EVERY: asked once

    assert asked == ["pipeline.storage_purge"]
