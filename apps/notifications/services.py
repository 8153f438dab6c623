"""Writes on notifications: create a message once, send it, retry what failed."""

import json
import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F

from apps.core import clock

from .channels import CHANNELS
from .models import Notification, WebhookEndpoint

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 900


def notification_create(
    *, event: str, subject_key: str, recipient_id: int, channels: list[str], title: str, body: str
) -> list[int]:
    """One row per channel; a second call for the same (event, subject, recipient) creates nothing."""
    ids = []
    for channel in channels:
        notification, _ = Notification.objects.get_or_create(
            event=event,
            subject_key=subject_key,
            recipient_id=recipient_id,
            channel=channel,
            defaults={"title": title, "body": body},
        )
        ids.append(notification.pk)
    return ids


def notification_webhooks(*, event: str, subject_key: str, payload: dict, phi: dict | None = None) -> list[int]:
    """One webhook message per subscribed endpoint; `phi` fields go only to endpoints approved for PHI."""
    ids = []
    for endpoint in WebhookEndpoint.objects.filter(enabled=True):
        if not endpoint.wants(event):
            continue
        body = {"event": event, **payload, **((phi or {}) if endpoint.phi_approved else {})}
        notification, _ = Notification.objects.get_or_create(
            event=event,
            subject_key=subject_key,
            endpoint=endpoint,
            defaults={
                "channel": Notification.Channel.WEBHOOK,
                "title": event,
                "body": json.dumps(body, sort_keys=True),
            },
        )
        ids.append(notification.pk)
    return ids


def notification_send(*, notification_id: int, now: datetime | None = None) -> str | None:
    """Claim a pending message (pending -> sending is the attempt counter), send it, record the result."""
    now = now or clock.now()
    with transaction.atomic():
        claimed = Notification.objects.filter(
            pk=notification_id, state=Notification.State.PENDING, next_attempt_at__lte=now
        ).update(attempts=F("attempts") + 1, next_attempt_at=now + timedelta(seconds=RETRY_MAX_SECONDS))
    if not claimed:
        return None
    notification = Notification.objects.select_related("recipient", "endpoint").get(pk=notification_id)
    try:
        CHANNELS[notification.channel](notification)
    except Exception as exc:  # noqa: BLE001 - any channel failure is recorded and retried, never raised
        return _failed(notification, f"{type(exc).__name__}: {exc}", now)
    notification.state = Notification.State.SENT
    notification.sent_at = clock.now()
    notification.last_error = ""
    notification.save(update_fields=["state", "sent_at", "last_error"])
    return notification.state


def _failed(notification: Notification, error: str, now: datetime) -> str:
    if notification.attempts >= MAX_ATTEMPTS:
        notification.state = Notification.State.FAILED
    else:
        delay = min(RETRY_BASE_SECONDS * 2 ** (notification.attempts - 1), RETRY_MAX_SECONDS)
        notification.next_attempt_at = now + timedelta(seconds=delay)
    notification.last_error = error[:2000]
    notification.save(update_fields=["state", "next_attempt_at", "last_error"])
    logger.warning("notify: notification %s failed (%s): %s", notification.pk, notification.state, error)
    return notification.state


def notifications_due(*, now: datetime | None = None) -> list[int]:
    now = now or clock.now()
    return list(
        Notification.objects.filter(state=Notification.State.PENDING, next_attempt_at__lte=now).values_list(
            "id", flat=True
        )[:500]
    )
