"""What the SCP does with each C-STORE: understand just enough, take custody, answer."""

import contextlib
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection

from apps.core import tls
from apps.studies.services import received_instance_register, received_instance_second_copy

from .inspect import Unreadable, inspect_file
from .models import AllowedCaller
from .storage import Spool, TempFile

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # our fault (disk, database): the sender should retry
DATASET_MISMATCH = 0xA900  # the dataset does not match what the command says
CANNOT_UNDERSTAND = 0xC000  # the data itself is bad: retrying will not help


@dataclass(frozen=True)
class Origin:
    calling_ae_title: str
    called_ae_title: str
    peer_address: str


@dataclass(frozen=True)
class Outcome:
    status: int
    comment: str = ""
    study_instance_uid: str = ""
    urgency: tuple[tuple[str, str], ...] = ()


def instance_receive(
    *,
    spool: Spool,
    received: TempFile | None,
    transfer_syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    origin: Origin,
    study_instance_uid: str | None = None,
) -> Outcome:
    """Take custody of one instance, received into a temp file of the spool, or say why not.

    0. A dataset that could not be written (disk full, say) answers 0xA700.
    1. Inspect the dataset strictly: truncated or unparseable data, or bad UIDs, answer 0xC000.
    2. The dataset's SOP class and instance must be the ones in the command, else 0xA900; so must its study,
       when the request names one (a STOW-RS URL does).
    3. Below the storage's free-space watermark, answer 0xA700: the sender retries once space is freed.
    4. Put the file in place (fsync, rename, fsync of the folder); a disk error answers 0xA700.
    5. Commit the received-instance row; a database error removes the file and answers 0xA700 (any other
       error removes it too). A SOP Instance UID already received is kept once: the new copy is removed,
       the answer is success (unless the kept copy's file is missing: the new one then takes its place).
    The caller discards the temp file afterwards (a no-op once it is in place).
    """
    if received is None:
        return Outcome(CANNOT_UNDERSTAND, "no dataset")
    if received.error is not None:
        logger.error("C-STORE %s: cannot write to storage: %s", sop_instance_uid[:64], received.error)
        return Outcome(OUT_OF_RESOURCES, "storage unavailable")
    try:
        identity, size = inspect_file(received.name, transfer_syntax)
    except Unreadable as exc:
        logger.warning("C-STORE from %s refused: %s", origin.calling_ae_title, exc)
        return Outcome(CANNOT_UNDERSTAND, str(exc))
    except OSError as exc:
        logger.error("C-STORE %s: cannot read the received dataset: %s", sop_instance_uid[:64], exc)
        return Outcome(OUT_OF_RESOURCES, "storage unavailable")
    if identity.sop_class_uid != sop_class_uid or identity.sop_instance_uid != sop_instance_uid:
        return Outcome(DATASET_MISMATCH, "dataset UIDs differ from the C-STORE request")
    if study_instance_uid is not None and identity.study_instance_uid != study_instance_uid:
        return Outcome(DATASET_MISMATCH, "the dataset belongs to another study than the request names")
    try:
        if spool.free_bytes() < settings.STORAGE_MIN_FREE_BYTES:
            logger.error("C-STORE refused: storage below its free-space watermark")
            return Outcome(OUT_OF_RESOURCES, "storage below its free-space watermark")
        relative = spool.adopt(received)
    except OSError as exc:
        logger.error("C-STORE %s: cannot write to storage: %s", identity.sop_instance_uid, exc)
        return Outcome(OUT_OF_RESOURCES, "storage unavailable")
    try:
        new = received_instance_register(
            sop_instance_uid=identity.sop_instance_uid,
            sop_class_uid=identity.sop_class_uid,
            study_instance_uid=identity.study_instance_uid,
            transfer_syntax_uid=str(transfer_syntax),
            path=relative,
            size=size,
            calling_ae_title=origin.calling_ae_title,
            called_ae_title=origin.called_ae_title,
            peer_address=origin.peer_address,
        )
        kept_new_copy = not new and received_instance_second_copy(
            sop_instance_uid=identity.sop_instance_uid, path=relative
        )
    except DatabaseError as exc:
        spool.remove(relative)
        _drop_connection()
        logger.error("C-STORE %s: database unavailable: %s", identity.sop_instance_uid, type(exc).__name__)
        return Outcome(OUT_OF_RESOURCES, "database unavailable")
    except BaseException:
        spool.remove(relative)  # whatever went wrong, no file stays without its row
        raise
    if not new and not kept_new_copy:
        spool.remove(relative)
    return Outcome(SUCCESS, study_instance_uid=identity.study_instance_uid, urgency=identity.urgency)


def _drop_connection() -> None:
    # A broken connection must not be reused: the next C-STORE opens a fresh one.
    with contextlib.suppress(DatabaseError):
        connection.close()


@dataclass(frozen=True)
class Caller:
    """One enabled allow-list entry, as the SCP checks it."""

    ae_title: str
    host: str = ""
    tls_required: bool = False
    client_ca_file: str = ""
    client_subject: str = ""
    client_sha256: str = ""
    may_query: bool = False
    may_retrieve: bool = False
    max_associations: int | None = None  # with a host: that host's own association limit (door.py)

    @property
    def needs_certificate(self) -> bool:
        return bool(self.client_ca_file or self.client_subject or self.client_sha256)


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection: its address, and over TLS the certificate it showed."""

    host: str
    tls: bool = False
    certificate: bytes | None = None  # DER


def allowed_callers() -> list[Caller]:
    fields = (
        "ae_title",
        "host",
        "tls_required",
        "client_ca_file",
        "client_subject",
        "client_sha256",
        "may_query",
        "may_retrieve",
        "max_associations",
    )
    return [Caller(*row) for row in AllowedCaller.objects.filter(enabled=True).values_list(*fields)]


def association_figures(allow_list: list[Caller]) -> dict[str, int]:
    """Hosts whose allow-list entry sets its own association limit (the door's; docs/security.md)."""
    figures: dict[str, int] = {}
    for caller in allow_list:
        if caller.host and caller.max_associations is not None:
            figures[caller.host] = max(figures.get(caller.host, 0), caller.max_associations)
    return figures


def caller_allowed(allow_list: list[Caller], *, ae_title: str, peer: Peer) -> bool:
    """An empty allow-list admits everyone; otherwise an entry for this title must admit this host (or
    have none), and its TLS terms: the TLS port, a client certificate issued by its CA, with its subject
    or fingerprint."""
    if not allow_list:
        return True
    return any(_admits(c, ae_title, peer) for c in allow_list)


def caller_may(allow_list: list[Caller], *, ae_title: str, peer: Peer, what: str) -> bool:
    """Whether an entry that admits this caller grants it `what` ("query" or "retrieve"). Unlike storage,
    an empty list grants nothing: what the router holds is shown only to callers named for it."""
    flag = {"query": "may_query", "retrieve": "may_retrieve"}[what]
    return any(getattr(c, flag) and _admits(c, ae_title, peer) for c in allow_list)


def _admits(caller: Caller, ae_title: str, peer: Peer) -> bool:
    return (
        ae_title.strip() == caller.ae_title.strip()
        and (not caller.host or caller.host == peer.host)
        and _tls_terms_met(caller, peer)
    )


def _tls_terms_met(caller: Caller, peer: Peer) -> bool:
    if (caller.tls_required or caller.needs_certificate) and not peer.tls:
        return False
    if not caller.needs_certificate:
        return True
    der = peer.certificate
    if der is None:
        return False
    try:
        if caller.client_ca_file and not tls.issued_by(der, caller.client_ca_file):
            return False
    except tls.TlsFileError as exc:
        logger.error("allow-list entry %s: %s", caller.ae_title.strip(), exc)
        return False
    if caller.client_subject and not tls.subject_matches(der, caller.client_subject):
        return False
    return not caller.client_sha256 or tls.fingerprint(der) == tls.normalise_fingerprint(caller.client_sha256)
