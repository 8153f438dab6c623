"""A local HTTP server receives the webhook: the signature verifies and the body carries no patient name."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from apps.configuration.services import config_import
from apps.notifications.models import Notification, WebhookEndpoint
from apps.notifications.services import notification_send

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """An HTTP server on a free loopback port recording each request; answers `status`."""

    def __init__(self, status: int = 204) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> "Receiver":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def assigned_study(storage, tmp_path, *, priority="STAT"):
    config_import(ACHEN_ON_SHIFT)
    _, paths = synthetic_study(tmp_path / "in", count=1, priority=priority, patient_name="Secret^Patient")
    study_id = receive_study(storage, paths)
    return run_steps(study_id)


def webhook_ids():
    return list(Notification.objects.filter(channel="webhook").values_list("id", flat=True))


def test_the_webhook_is_signed_and_carries_no_patient_name(storage, tmp_path, default_mapping, monkeypatch):
    monkeypatch.setenv("RIS_WEBHOOK_SECRET", "s3cret")
    with Receiver() as receiver:
        WebhookEndpoint.objects.create(
            name="ris", url=receiver.url, secret="env:RIS_WEBHOOK_SECRET", events="stat_assigned"
        )
        assigned_study(storage, tmp_path)
        [notification_id] = webhook_ids()
        assert notification_send(notification_id=notification_id) == "sent"
    [(headers, body)] = receiver.requests
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Router-Signature"], expected)
    assert headers["X-Router-Event"] == "stat_assigned"
    payload = json.loads(body)
    assert payload["priority"] == "STAT" and payload["radiologist"] == "achen"
    assert "Secret" not in body.decode() and "patient_name" not in payload


def test_only_an_endpoint_approved_for_phi_gets_the_patient_name(storage, tmp_path, default_mapping):
    with Receiver() as receiver:
        WebhookEndpoint.objects.create(name="approved", url=receiver.url, secret="x", phi_approved=True)
        assigned_study(storage, tmp_path)
        for notification_id in webhook_ids():
            notification_send(notification_id=notification_id)
    assert json.loads(receiver.requests[0][1])["patient_name"] == "Secret^Patient"


def test_a_failing_endpoint_is_retried_and_never_blocks_the_chain(storage, tmp_path, default_mapping):
    with Receiver(status=500) as receiver:
        WebhookEndpoint.objects.create(name="down", url=receiver.url, secret="x")
        assigned_study(storage, tmp_path, priority="ROUTINE")
        [notification_id] = webhook_ids()
        assert notification_send(notification_id=notification_id) == "pending"
    notification = Notification.objects.get(pk=notification_id)
    assert notification.attempts == 1 and "500" in notification.last_error
    email = Notification.objects.get(channel="email")
    assert notification_send(notification_id=email.pk) == "sent"  # the reader is told whatever the webhook does
    assert len(receiver.requests) == 1
