"""Certificates that expire soon (ours, a destination's) are told to staff once each; paused destinations
too."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model

from apps.core import clock
from apps.notifications.models import Notification
from apps.pipeline.services import certificates_expiring_notify, destination_paused_notify
from apps.routing.models import Destination
from apps.routing.services import destination_config_error_set

from ..support.certs import Authority

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db):
    return get_user_model().objects.create(username="ops", email="ops@example.org", is_staff=True)


def test_certificates_expiring_within_two_weeks_are_told_once_each(staff, settings, tmp_path):
    ca = Authority(tmp_path / "ca")
    settings.SCP_TLS_PORT, settings.SCP_TLS_CERT = 2762, str(ca.issue("router", server=True, days=5).cert)
    far = ca.issue("router-client", days=100)
    now = clock.now()
    Destination.objects.create(
        name="remote",
        ae_title="PACS",
        host="pacs.example.org",
        port=2762,
        tls_enabled=True,
        tls_cert_file=str(far.cert),
        tls_key_file=str(far.key),
        tls_peer_not_after=now + timedelta(days=3),
        tls_peer_fingerprint="ab" * 32,
    )
    Destination.objects.create(
        name="fine",
        ae_title="FINE",
        host="fine.example.org",
        port=2762,
        tls_enabled=True,
        tls_peer_not_after=now + timedelta(days=300),
        tls_peer_fingerprint="cd" * 32,
    )

    assert len(certificates_expiring_notify()) == 4  # two certificates, in-app and email each
    titles = sorted(Notification.objects.filter(channel="in_app").values_list("title", flat=True))
    assert [t.split(": ", 1)[1] for t in titles] == ["destination remote", "this router's SCP"]
    assert certificates_expiring_notify() == []  # once


def test_a_destination_paused_for_a_configuration_error_is_told_once_per_pause(staff):
    destination = Destination.objects.create(name="remote", ae_title="PACS", host="pacs.example.org", port=2762)
    assert destination_config_error_set(
        destination_id=destination.pk, error="TLS: certificate has expired", now=clock.now()
    )
    assert not destination_config_error_set(destination_id=destination.pk, error="again", now=clock.now())
    sent = destination_paused_notify(destination_id=destination.pk)
    assert len(sent) == 2
    body = Notification.objects.filter(channel="in_app").get().body
    assert "certificate has expired" in body and "Resume" in body
    assert destination_paused_notify(destination_id=destination.pk) == []
