"""The only code that sends messages out of the router. Channels are a plain registry."""

from collections.abc import Callable

from django.core.mail import send_mail

from .models import Notification


def send_in_app(notification: Notification) -> None:
    """In-app messages are delivered by being stored; the worklist reads them."""


def send_email(notification: Notification) -> None:
    if not notification.recipient.email:
        raise ValueError("recipient has no email address")
    send_mail(notification.title, notification.body, None, [notification.recipient.email], fail_silently=False)


CHANNELS: dict[str, Callable[[Notification], None]] = {
    Notification.Channel.IN_APP: send_in_app,
    Notification.Channel.EMAIL: send_email,
}
