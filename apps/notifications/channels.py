"""The only code that sends messages out of the router. Channels are a plain registry."""

import hashlib
import hmac
import urllib.request
from collections.abc import Callable

from django.core.mail import send_mail

from apps.core import secret_refs

from .models import Notification


def send_in_app(notification: Notification) -> None:
    """In-app messages are delivered by being stored; the worklist reads them."""


def send_email(notification: Notification) -> None:
    if not notification.recipient.email:
        raise ValueError("recipient has no email address")
    send_mail(notification.title, notification.body, None, [notification.recipient.email], fail_silently=False)


WEBHOOK_TIMEOUT = 10


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def endpoint_key(endpoint) -> bytes:
    """The endpoint's signing secret, read where its reference says (env:VARIABLE or file:/path). A literal
    kept from before references still signs; the configuration document never carries it."""
    if secret_refs.is_reference(endpoint.secret):
        return secret_refs.read(endpoint.secret)
    return endpoint.secret.encode()


def send_webhook(notification: Notification) -> None:
    """POST the JSON body with its HMAC-SHA256 signature; anything but a 2xx answer raises (and is retried)."""
    endpoint = notification.endpoint
    body = notification.body.encode()
    request = urllib.request.Request(
        endpoint.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Router-Event": notification.event,
            "X-Router-Signature": signature(endpoint_key(endpoint), body),
        },
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:  # noqa: S310 - admin-set URL
        if not 200 <= response.status < 300:
            raise OSError(f"webhook answered {response.status}")


CHANNELS: dict[str, Callable[[Notification], None]] = {
    Notification.Channel.IN_APP: send_in_app,
    Notification.Channel.EMAIL: send_email,
    Notification.Channel.WEBHOOK: send_webhook,
}
