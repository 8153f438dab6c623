"""What we know of a destination: up or down (C-ECHO, and what a send found), busy with our other
associations (and the limit it taught us), and the DICOM target our sender connects to."""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from apps.core import clock, signals, tls

from . import dicom_send, stow
from .models import Delivery, Destination, Health, Protocol

logger = logging.getLogger(__name__)


# How long a destination found busy (it left an association request of ours unanswered while it served others
# of ours) gets no more associations at once than it served then. After that a further one is tried again:
# its operator may have raised its limit, and finding out costs one association request.
BUSY_MEMORY = timedelta(hours=1)


def association_limit(destination: Destination, now: datetime) -> int:
    """Associations we may hold at once: the configured limit, or fewer while the destination proved busy."""
    if destination.busy_limit and destination.busy_at and destination.busy_at > now - BUSY_MEMORY:
        return min(destination.max_associations, destination.busy_limit)
    return destination.max_associations


def destination_health_from_results(destination: Destination, results: list[dicom_send.Result], now: datetime) -> bool:
    """A destination that answered is up; one we could not reach at all is down (its queue pauses), unless it
    was busy: it took the connection and left our request waiting while it served another of ours. Returns
    whether it was busy."""
    reached = any(r.status is not None for r in results)  # it answered at least one C-STORE
    unreachable = bool(results) and all(r.unreachable for r in results)
    if certificate := next((r.peer_certificate for r in results if r.peer_certificate), None):
        peer_certificate_record(destination, certificate)
    if config_error := next((r.error for r in results if r.config_error), None):
        destination_config_error_set(destination_id=destination.pk, error=config_error, now=now)
    elif reached:
        destination_health_set(destination_id=destination.pk, up=True, detail="", now=now)
    elif unreachable and is_busy(destination.pk, results):
        _busy_record(destination, now)
        return True
    elif unreachable:
        destination_health_set(destination_id=destination.pk, up=False, detail=results[0].error, now=now)
    return False


def is_busy(destination_id: int, results: list[dicom_send.Result]) -> bool:
    """Busy, not down: connected, no answer to the association request, and another delivery of ours to it is
    sending (besides the caller's own, still `sending` while it reports). Refused or nothing else of ours
    open is down."""
    if not any(r.connected for r in results):
        return False
    return Delivery.objects.filter(target_id=destination_id, state=Delivery.State.SENDING).count() >= 2


def _busy_record(destination: Destination, now: datetime) -> None:
    """Remember how many associations of ours it served when it left another waiting: no more than that now."""
    serving = Delivery.objects.filter(target=destination, state=Delivery.State.SENDING).count() - 1
    Destination.objects.filter(pk=destination.pk).update(busy_limit=max(serving, 1), busy_at=now)
    logger.info(
        "destination %s is busy (serving %d association(s) of ours): at most that many for %s",
        destination.name,
        max(serving, 1),
        BUSY_MEMORY,
    )


def destination_health_set(*, destination_id: int, up: bool, detail: str, now: datetime) -> bool:
    """Record a destination's health; True when it just came back (its paused deliveries are released)."""
    with transaction.atomic():
        destination = Destination.objects.select_for_update().get(pk=destination_id)
        was_down = destination.health == Health.DOWN
        destination.health = Health.UP if up else Health.DOWN
        destination.health_checked_at = now
        destination.health_detail = detail[:255]
        if up:
            destination.down_since = None
        elif destination.down_since is None:
            destination.down_since = now
        destination.save(update_fields=["health", "health_checked_at", "health_detail", "down_since"])
        if up and was_down:
            Delivery.objects.filter(destination=destination, state=Delivery.State.PENDING).update(next_attempt_at=now)
            logger.info("destination %s is reachable again: its deliveries resume", destination.name)
            return True
    if not up and not was_down:
        logger.warning("destination %s is unreachable (%s): its deliveries pause", destination.name, detail)
    return False


def destinations_check(*, now: datetime | None = None, interval: float | None = None) -> list[int]:
    """C-ECHO the enabled destinations not heard from within `interval` (a send counts); returns the
    ids that just came back."""
    now = now or clock.now()
    quiet_since = now - timedelta(seconds=interval if interval is not None else settings.HEALTH_CHECK_INTERVAL)
    back = []
    due = Destination.objects.filter(enabled=True, config_error="").filter(
        Q(health_checked_at__isnull=True) | Q(health_checked_at__lt=quiet_since) | Q(health=Health.DOWN)
    )
    for destination in due:
        if _sending_now(destination, now):
            continue  # its answers are proof of life; an echo would wait behind them and could time out
        result = echo(destination)
        if result.peer_certificate:
            peer_certificate_record(destination, result.peer_certificate)
        if result.config_error:
            destination_config_error_set(destination_id=destination.pk, error=result.error, now=clock.now())
            continue
        up = result.kind == dicom_send.DELIVERED
        if destination_health_set(destination_id=destination.pk, up=up, detail=result.error, now=clock.now()):
            back.append(destination.pk)
    return back


def _sending_now(destination: Destination, now: datetime) -> bool:
    """A delivery of ours to it renewed its claim recently: answers arrive (at most `dimse_timeout` apart,
    or the sender gives up), and the claim is renewed at most once a second."""
    recent = now - timedelta(seconds=destination.dimse_timeout + 1)
    return Delivery.objects.filter(target=destination, state=Delivery.State.SENDING, claimed_at__gte=recent).exists()


def dicom_target(destination: Destination) -> dicom_send.Target:
    return dicom_send.Target(
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        calling_ae_title=settings.SCP_AE_TITLE,
        connect_timeout=destination.connect_timeout,
        dimse_timeout=destination.dimse_timeout,
        network_timeout=destination.network_timeout,
        tls=client_tls(destination),
    )


def client_tls(destination: Destination) -> tls.ClientTls | None:
    if not destination.tls_enabled:
        return None
    return tls.ClientTls(
        ca=destination.tls_ca_file,
        cert=destination.tls_cert_file,
        key=destination.tls_key_file,
        verify=destination.tls_verify,
        check_hostname=destination.tls_check_hostname,
    )


def destination_config_error_set(*, destination_id: int, error: str, now: datetime) -> bool:
    """Pause a destination for a configuration error (its deliveries wait, nothing is retried, the health
    check leaves it alone) and tell staff, once per pause. True when it was not paused already."""
    paused = Destination.objects.filter(pk=destination_id, config_error="").update(
        config_error=error[:255], config_error_at=now
    )
    if paused:
        logger.error("destination %s paused: %s", destination_id, error)
        transaction.on_commit(lambda: signals.destination_paused.send(Destination, destination_id=destination_id))
    return bool(paused)


def destination_resume(*, destination_id: int, now: datetime | None = None) -> bool:
    """An operator fixed the configuration: the destination's deliveries are due again at once."""
    now = now or clock.now()
    with transaction.atomic():
        resumed = (
            Destination.objects.filter(pk=destination_id)
            .exclude(config_error="")
            .update(config_error="", config_error_at=None, health_checked_at=None)
        )
        if resumed:
            Delivery.objects.filter(destination_id=destination_id, state=Delivery.State.PENDING).update(
                next_attempt_at=now
            )
    return bool(resumed)


def peer_certificate_record(destination: Destination, der: bytes) -> None:
    """Remember when the certificate the destination presented expires (the expiry warning reads it)."""
    facts = tls.certificate_facts(der)
    if destination.tls_peer_fingerprint != facts.fingerprint:
        Destination.objects.filter(pk=destination.pk).update(
            tls_peer_fingerprint=facts.fingerprint, tls_peer_not_after=facts.not_after
        )
        destination.tls_peer_fingerprint, destination.tls_peer_not_after = facts.fingerprint, facts.not_after


def destination_echo(*, destination_id: int) -> dicom_send.Result:
    return echo(Destination.objects.get(pk=destination_id))


def sender(destination: Destination) -> tuple:
    """How to send to this destination: (send function, target) for C-STORE or STOW-RS; both take
    (target, files, on_sent) and answer one dicom_send.Result per file."""
    if destination.protocol == Protocol.DICOMWEB:
        return stow.send, web_target(destination)
    return dicom_send.send, dicom_target(destination)


class _WebSession:
    """STOW-RS has no association to keep: each send is its own requests (batched as configured)."""

    def __init__(self, target) -> None:
        self.target = target

    def send(self, files, on_sent=None) -> list[dicom_send.Result]:
        return stow.send(self.target, files, on_sent=on_sent)

    def close(self) -> None:
        pass


def sender_session(destination: Destination):
    """A sender that stays connected across sends (streaming): `send(files, on_sent)`, then `close()`."""
    if destination.protocol == Protocol.DICOMWEB:
        return _WebSession(web_target(destination))
    return dicom_send.Session(dicom_target(destination))


def echo(destination: Destination) -> dicom_send.Result:
    """Is it there: C-ECHO, or a QIDO-RS search for a DICOMweb destination."""
    if destination.protocol == Protocol.DICOMWEB:
        return stow.probe(web_target(destination))
    return dicom_send.echo(dicom_target(destination))


def web_target(destination: Destination) -> stow.WebTarget:
    return stow.WebTarget(
        url=destination.dicomweb_url,
        auth=destination.dicomweb_auth,
        credentials=destination.dicomweb_credentials,
        timeout=destination.request_timeout,
        verify=destination.tls_verify,
        ca_file=destination.tls_ca_file,
        batch_count=destination.batch_count,
        batch_bytes=destination.batch_bytes,
        verify_stored=destination.dicomweb_verify,
    )
