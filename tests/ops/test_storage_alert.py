"""Storage below its free-space watermark: the admins are told (in-app, email, webhooks), once a day."""

from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import User

from apps.notifications.models import Notification, WebhookEndpoint
from apps.ops.services import free_bytes
from apps.pipeline.services import STORAGE_LOW_EVENT, storage_low_notify
from routerproject.celery import app

pytestmark = pytest.mark.django_db

MORNING = datetime(2026, 11, 22, 8, 0).astimezone()


@pytest.fixture
def admin():
    return User.objects.create(username="admin", email="admin@example.org", is_staff=True)


def test_nothing_is_said_while_storage_is_above_the_watermark(settings, storage, admin):
    settings.STORAGE_MIN_FREE_BYTES = 1024
    assert storage_low_notify(now=MORNING) == []


def test_below_the_watermark_the_admins_and_webhooks_are_told_once_a_day(settings, storage, admin):
    WebhookEndpoint.objects.create(name="ops", url="http://127.0.0.1:9/hook", secret="s")
    User.objects.create(username="reader", email="reader@example.org")  # not staff: not told
    settings.STORAGE_MIN_FREE_BYTES = free_bytes() + 2**40

    def sent():
        return Notification.objects.filter(event=STORAGE_LOW_EVENT)

    first = storage_low_notify(now=MORNING)
    assert len(first) == 3  # the admin in-app and by email, one webhook
    assert {(n.channel, n.recipient_id) for n in sent()} == {
        ("in_app", admin.pk),
        ("email", admin.pk),
        ("webhook", None),
    }
    assert "0xA700" in sent().get(channel="in_app").body

    storage_low_notify(now=MORNING + timedelta(hours=3))  # the same rows are found; sending them is idempotent
    assert sent().count() == 3
    storage_low_notify(now=MORNING + timedelta(days=1))
    assert sent().count() == 6


def test_beat_checks_the_storage():
    assert app.conf.beat_schedule["storage-check"]["task"] == "pipeline.storage_check"
