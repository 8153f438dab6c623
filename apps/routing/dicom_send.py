"""The only DICOM SCU in the router: send stored files to a destination, byte for byte.

Files go from disk in chunks with their own transfer syntax (no decoding, no transcoding), over one
association per destination with presentation contexts taken from the files themselves. Every outcome
is classified, never guessed: delivered, warning (delivered, kept), transient (retry), permanent (stop).
"""

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from apps.core import internals, tls
from apps.core.tls import ClientTls

logger = logging.getLogger(__name__)

# Stream files from disk instead of decoding them: bounded memory and the exact bytes we received.
_config.STORE_SEND_CHUNKED_DATASET = True
# pynetdicom logs every C-FIND/C-MOVE identifier (PatientID, names) at INFO: never in our logs.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

DELIVERED, WARNING, TRANSIENT, PERMANENT = "delivered", "warning", "transient", "permanent"
SKIPPED = "skipped"  # not sent: its copy was not made (the caller knows why)
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128  # the most presentation contexts one association may propose


@dataclass(frozen=True)
class Target:
    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    connect_timeout: float = 10
    dimse_timeout: float = 30
    network_timeout: float = 60
    tls: ClientTls | None = None  # None: plain TCP
    # A C-MOVE's sub-operations name who asked and the request (Move Originator AE Title and Message ID).
    originator: tuple[str, int] | None = None


@dataclass(frozen=True)
class File:
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    # A copy still being made for this send (apps/routing/transformed.py): waits until it is written, False
    # when it will not be (the profile holds it); such a file is skipped, its result SKIPPED.
    ready: Callable[[], bool] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Result:
    kind: str
    status: int | None = None
    error: str = ""
    unreachable: bool = False  # no association at all: refused, timed out, rejected
    # The destination took the TCP connection but did not answer the association request in time: a peer
    # serving one association at a time does that while it serves another (the caller decides which).
    connected: bool = False
    # TLS refused by configuration (a certificate that does not verify, no common protocol, unreadable
    # files): no retry mends it, the destination is paused for an operator. The items stay pending.
    config_error: bool = False
    peer_certificate: bytes | None = None  # DER, over TLS: what the destination presented
    retry_after: float | None = None  # seconds the destination asked us to wait (STOW-RS 429 Retry-After)


class _Connection:
    """What the EVT_CONN_OPEN handler saw: the connection opened, and over TLS the peer's certificate."""

    def __init__(self) -> None:
        self.opened = False
        self.peer_certificate: bytes | None = None


def classify_status(status: int) -> str:
    if status == 0x0000:
        return DELIVERED
    if status in WARNING_STATUSES:
        return WARNING
    if 0xA700 <= status <= 0xA7FF:
        return TRANSIENT
    # 0x0122 SOP class not supported, 0x0124 not authorised, A9xx, Cxxx and the rest: retrying will not help.
    return PERMANENT


def _nodelay(event) -> None:
    with contextlib.suppress(OSError, AttributeError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# pynetdicom's association thread (its "reactor") and our send_* calls race for the DIMSE message queue
# (pynetdicom issues 435 and 875, unfixed in 3.0.4). send_c_store pauses the reactor by clearing a checkpoint
# and waiting until `_is_paused` is True; a reactor just back from that wait, which has not yet set it to
# False again, passes as paused, takes the C-STORE-RSP with `get_msg(block=False)`, drops it ("unexpected
# C-STORE service message"), and the sender waits for it until its DIMSE timeout. On our associations, pure
# SCU, the only rightful readers of that queue are the send_* calls, which all read with `get_msg(block=True)`;
# the reactor is the only non-blocking reader, and what it would serve (requests from the peer) a storage SCU
# never receives. So its reads return nothing: immune by construction, whatever the threads' timing.
# Written for the version and private parts listed in apps/core/internals.py (system check core.E005 refuses
# to start on others); installed only where they fit, so a process that skipped the check sends unpatched.
PATCH_FITS = not internals.patch_problems(internals.patch_of(__name__))


def _reactor_reads_nothing(assoc) -> None:
    """Leave the DIMSE queue of this one association to the blocking readers (the send_* calls)."""
    blocking_read = assoc.dimse.get_msg

    def get_msg(block: bool = False):
        return blocking_read(block=True) if block else (None, None)

    assoc.dimse.get_msg = get_msg


def _on_conn_open(event, connection: _Connection, patch_reactor: bool = True) -> None:
    """The TCP connection is up (and TLS hands shaken), before the association's threads read anything."""
    _nodelay(event)
    connection.opened = True
    connection.peer_certificate = tls.peer_certificate(event.assoc.dul.socket.socket)
    if PATCH_FITS and patch_reactor:
        _reactor_reads_nothing(event.assoc)


def _ae(target: Target) -> AE:
    ae = AE(ae_title=target.calling_ae_title)
    ae.connection_timeout = target.connect_timeout
    ae.acse_timeout = target.connect_timeout
    ae.dimse_timeout = target.dimse_timeout
    ae.network_timeout = target.network_timeout
    return ae


def _associate(
    target: Target, contexts, *, patch_reactor: bool = True, handlers: tuple = ()
) -> tuple[object | None, _Connection, Result | None]:
    """Open an association proposing `contexts` ((abstract syntax, transfer syntaxes or None for the default),
    over TLS if the target says so): (association, connection, None) once established, or (None, connection,
    why not). `patch_reactor=False` leaves the association's reactor serving the peer's requests (see
    `commit`); `handlers`: more event handlers. The one place every association of the router's SCU opens."""
    ae = _ae(target)
    for abstract_syntax, syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, syntaxes or DEFAULT_TRANSFER_SYNTAXES)
    connection = _Connection()
    tls_args = None
    if target.tls is not None:
        try:
            tls_args = (tls.client_context_cached(target.tls), target.host)
        except tls.TlsFileError as exc:
            return None, connection, Result(TRANSIENT, error=f"TLS: {exc}", unreachable=True, config_error=True)
    try:
        assoc = ae.associate(
            target.host,
            target.port,
            ae_title=target.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, _on_conn_open, [connection, patch_reactor]), *handlers],
        )
    except (OSError, RuntimeError, ValueError) as exc:
        return None, connection, Result(TRANSIENT, error=f"connect failed: {exc}", unreachable=True)
    if not assoc.is_established:
        return None, connection, _association_failure(assoc, target, connection)
    return assoc, connection, None


def _association_failure(assoc, target: Target, connection: _Connection) -> Result:
    if problem := _tls_problem(target, connection):
        return Result(TRANSIENT, error=problem, unreachable=True, config_error=True)
    connected = connection.opened
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        result = getattr(rejection, "result", None)
        source = getattr(rejection, "result_source", "?")
        reason = (
            f"association rejected (result {result}, source {source}, reason {getattr(rejection, 'diagnostic', '?')})"
        )
        return Result(PERMANENT if result == 0x01 else TRANSIENT, error=reason, unreachable=True)
    if assoc.acceptor.primitive is None and connected:
        error = "the destination took the connection but did not answer the association request in time"
        return Result(TRANSIENT, error=error, unreachable=True, connected=True)
    if assoc.acceptor.primitive is None:
        return Result(TRANSIENT, error="could not connect to the destination (refused or timed out)", unreachable=True)
    return Result(TRANSIENT, error="association aborted by the destination", unreachable=True)


def _tls_problem(target: Target, connection: _Connection) -> str | None:
    """Over TLS, a connection that never opened may have been refused by TLS itself: pynetdicom 3.0.4 only
    logs why, so one handshake of our own tells a configuration error from a network failure."""
    if target.tls is None or connection.opened:
        return None
    context = tls.client_context_cached(target.tls)
    return tls.handshake_problem(target.host, target.port, context, timeout=target.connect_timeout)


def send(target: Target, files: list[File], on_sent: Callable[[int, Result], None] | None = None) -> list[Result]:
    """Send `files`; one Result per file, in order. Never raises for network or peer trouble.

    `on_sent(index, result)` is called as each file's outcome is known: its answer, or the association that
    could not be opened for it. A caller so records progress before the association ends (a worker killed
    half way then re-sends only what was not answered), and sees at once why nothing was sent."""
    results: list[Result | None] = [None] * len(files)
    contexts = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files})
    for start in range(0, len(contexts), MAX_CONTEXTS):
        group = set(contexts[start : start + MAX_CONTEXTS])
        indexes = [i for i, f in enumerate(files) if (f.sop_class_uid, f.transfer_syntax_uid) in group]
        _send_group(target, files, indexes, group, results, on_sent)
    return [r or Result(TRANSIENT, error="not attempted") for r in results]


def _send_group(target: Target, files: list[File], indexes: list[int], group: set, results: list, on_sent=None) -> None:
    assoc, connection, failure = _associate(target, [(c, [ts]) for c, ts in sorted(group)])
    if failure is not None:
        _fail_all(indexes, failure, results, on_sent)
        return
    try:
        for i in indexes:
            if not assoc.is_established:
                results[i] = Result(TRANSIENT, error="association ended before this instance was sent")
                continue
            if files[i].ready is not None and not files[i].ready():
                results[i] = Result(SKIPPED, error="no copy made for this destination")
            else:
                results[i] = _send_one(assoc, files[i], connection.peer_certificate, originator=target.originator)
            if on_sent is not None:
                on_sent(i, results[i])
    finally:
        if assoc.is_established:
            assoc.release()


class Session:
    """One association kept open across sends, for a sender that streams a study as it arrives. It is opened
    at the first send with the contexts the files need, and opened again, with every context seen so far, when
    a file needs one it lacks (a study rarely mixes more than a few). `close()` releases it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.assoc = None
        self.connection: _Connection | None = None
        self.contexts: set[tuple[str, str]] = set()

    def send(self, files: list[File], on_sent: Callable[[int, Result], None] | None = None) -> list[Result]:
        results = []
        for i, file in enumerate(files):
            result = self._send(file)
            results.append(result)
            if on_sent is not None:
                on_sent(i, result)
        return results

    def _send(self, file: File) -> Result:
        context = (file.sop_class_uid, file.transfer_syntax_uid)
        is_open = self.assoc is not None and self.assoc.is_established and context in self.contexts
        if not is_open and (failure := self._open(context)):
            return failure
        return _send_one(self.assoc, file, self.connection.peer_certificate)

    def _open(self, needed: tuple[str, str]) -> Result | None:
        self.close()
        contexts = {needed, *sorted(self.contexts - {needed})[: MAX_CONTEXTS - 1]}
        assoc, connection, failure = _associate(self.target, [(c, [ts]) for c, ts in sorted(contexts)])
        if failure is not None:
            return failure
        self.assoc, self.connection, self.contexts = assoc, connection, contexts
        return None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


def _fail_all(indexes: list[int], failure: Result, results: list, on_sent=None) -> None:
    for i in indexes:
        results[i] = failure
        if on_sent is not None:
            on_sent(i, failure)


def send_over(assoc, files: list[File], on_sent: Callable[[int, Result], None], *, first_message_id: int) -> None:
    """Send `files` over an association the peer opened (a C-GET's), numbering the requests from
    `first_message_id`; `on_sent(index, result)` as each answer arrives."""
    for i, file in enumerate(files):
        if not assoc.is_established:
            on_sent(i, Result(TRANSIENT, error="association ended before this instance was sent"))
            continue
        on_sent(i, _send_one(assoc, file, None, message_id=(first_message_id + i) % 65536))


def _send_one(
    assoc, file: File, peer_certificate: bytes | None, *, originator: tuple[str, int] | None = None, message_id: int = 1
) -> Result:
    aet, originator_id = originator or (None, None)
    try:
        status = assoc.send_c_store(file.path, msg_id=message_id, originator_aet=aet, originator_id=originator_id)
    except ValueError as exc:
        # No accepted presentation context: the destination does not take this SOP class or syntax.
        return Result(PERMANENT, error=f"not accepted by the destination: {exc}")
    except (OSError, RuntimeError, AttributeError) as exc:
        return Result(TRANSIENT, error=f"send failed: {exc}")
    if "Status" not in status:
        return Result(TRANSIENT, error="no response from the destination (timeout or abort)")
    code = int(status.Status)
    kind = classify_status(code)
    comment = str(status.get("ErrorComment", ""))
    if kind == WARNING:
        logger.warning("C-STORE warning 0x%04X from %s: %s", code, assoc.acceptor.ae_title, comment)
    return Result(kind, status=code, error=comment if kind != DELIVERED else "", peer_certificate=peer_certificate)


def echo(target: Target) -> Result:
    # send_c_echo waits for its answer as send_c_store does: the same race, the same cure (_on_conn_open).
    assoc, connection, failure = _associate(target, [(Verification, None)])
    if failure is not None:
        return failure
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        return Result(TRANSIENT, error="no response to C-ECHO")
    code = int(status.Status)
    return Result(classify_status(code), status=code, peer_certificate=connection.peer_certificate)


# -- storage commitment (Push Model, PS3.4 Annex J) --------------------------------------------------

COMMIT_ACTION = 1  # Request Storage Commitment
COMMITTED_EVENT, SOME_FAILED_EVENT = 1, 2  # N-EVENT-REPORT event types
# N-ACTION answers that say "later": processing failure and resource limitation; the rest of 01xx/02xx stop.
COMMIT_TRANSIENT_STATUSES = {0x0110, 0x0213}
# Seconds between two looks at whether the report came on another association, while waiting on ours.
REPORT_LOOK = 0.05


@dataclass(frozen=True)
class CommitmentReport:
    """What an N-EVENT-REPORT of storage commitment says: the transaction, the instances committed, and those
    that failed (SOP Instance UID -> Failure Reason, 0 when none given)."""

    transaction_uid: str
    committed: tuple[str, ...]
    failed: dict[str, int]


@dataclass(frozen=True)
class Commit:
    """The N-ACTION's outcome, and the report when the destination sent it on the same association."""

    result: Result
    report: CommitmentReport | None = None


def commitment_request(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    """The N-ACTION's Action Information: the Transaction UID and the Referenced SOP Sequence."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class_uid, sop_instance_uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def commitment_report_parse(event_type: int, info: Dataset) -> CommitmentReport:
    """An N-EVENT-REPORT's Event Information read into committed and failed instances. Raises ValueError when
    it is no storage commitment result (another event type, no Transaction UID)."""
    if event_type not in (COMMITTED_EVENT, SOME_FAILED_EVENT):
        raise ValueError(f"event type {event_type} is no storage commitment result")
    transaction_uid = str(info.get("TransactionUID", "") or "").strip()
    if not transaction_uid:
        raise ValueError("the report has no Transaction UID")
    committed = tuple(
        str(item.ReferencedSOPInstanceUID)
        for item in info.get("ReferencedSOPSequence", None) or []
        if item.get("ReferencedSOPInstanceUID")
    )
    failed = {
        str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0) or 0)
        for item in info.get("FailedSOPSequence", None) or []
        if item.get("ReferencedSOPInstanceUID")
    }
    return CommitmentReport(transaction_uid, committed, failed)


class _SameAssociationReport:
    """An N-EVENT-REPORT the destination sends on our own association, before we release it. `arrived` is set
    once our answer to it is on the wire: released earlier, the answer would meet a closing association (the
    reactor sends it after this handler returns; pynetdicom: "Invalid event 'Evt9' for the current state
    'Sta7'") and the destination, still waiting for it, would hold the release for its timeout."""

    def __init__(self, transaction_uid: str) -> None:
        self.transaction_uid = transaction_uid
        self.report: CommitmentReport | None = None
        self.answering = False
        self.arrived = threading.Event()

    def sent(self, event) -> None:
        """EVT_PDU_SENT: the first P-DATA we send after the report is our answer to it."""
        if self.answering and isinstance(event.pdu, P_DATA_TF):
            self.arrived.set()

    def __call__(self, event) -> tuple[int, None]:
        try:
            report = commitment_report_parse(event.event_type, event.event_information)
        except Exception as exc:  # noqa: BLE001 - a report we cannot read: processing failure, never a crash
            logger.warning("storage commitment report on our association not understood: %s", exc)
            return 0x0110, None
        if report.transaction_uid == self.transaction_uid:
            self.report = report
            self.answering = True
        return 0x0000, None


def commit(
    target: Target,
    transaction_uid: str,
    references: list[tuple[str, str]],
    *,
    wait_for_report: float = 0.0,
    answered_elsewhere: Callable[[], bool] | None = None,
) -> Commit:
    """Ask `target` to commit to storing `references` ((SOP Class UID, SOP Instance UID) pairs) under
    `transaction_uid`: one N-ACTION of the Storage Commitment Push Model. Never raises for network or peer
    trouble. A destination may send its report before we release the association: with `wait_for_report`
    seconds we wait for it there (most, Orthanc among them, send it later on a new association to our SCP).
    `answered_elsewhere`, asked every REPORT_LOOK seconds meanwhile, ends the wait once that report came."""
    contexts = [(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]), (Verification, None)]
    # Verification too: a destination that takes the association but not storage commitment then says so by
    # rejecting that one context (permanent), where it would otherwise abort an association it has no use for.
    same = _SameAssociationReport(transaction_uid)
    # No `_reactor_reads_nothing` here: that patch makes the reactor read nothing, and an N-EVENT-REPORT
    # *request* the destination sends on this association would never be served (nor answered). The race it
    # cures can cost us the N-ACTION's answer: that comes back as "no response" (transient), and a report the
    # destination sends anyway is matched by its Transaction UID all the same.
    assoc, connection, failure = _associate(
        target, contexts, patch_reactor=False, handlers=((evt.EVT_N_EVENT_REPORT, same), (evt.EVT_PDU_SENT, same.sent))
    )
    if failure is not None:
        return Commit(failure)
    try:
        result = _send_action(assoc, commitment_request(transaction_uid, references), connection.peer_certificate)
        if result.kind == DELIVERED and wait_for_report > 0:
            deadline = time.monotonic() + wait_for_report
            while not same.arrived.wait(max(0.0, min(REPORT_LOOK, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or (answered_elsewhere is not None and answered_elsewhere()):
                    break
    finally:
        if assoc.is_established:
            assoc.release()
    return Commit(result, same.report)


def _send_action(assoc, action: Dataset, peer_certificate: bytes | None) -> Result:
    try:
        status, _reply = assoc.send_n_action(
            action, COMMIT_ACTION, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
    except ValueError as exc:  # no accepted presentation context: no storage commitment there
        return Result(PERMANENT, error=f"storage commitment not accepted by the destination: {exc}")
    except (OSError, RuntimeError, AttributeError) as exc:
        return Result(TRANSIENT, error=f"N-ACTION failed: {exc}")
    if "Status" not in status:
        return Result(TRANSIENT, error="no response to the storage commitment request (timeout or abort)")
    code = int(status.Status)
    kind = TRANSIENT if code in COMMIT_TRANSIENT_STATUSES else classify_status(code)
    if kind == WARNING or code == 0x0001:  # accepted, with a warning
        kind = DELIVERED
    comment = str(status.get("ErrorComment", ""))
    error = "" if kind == DELIVERED else f"storage commitment request answered 0x{code:04X} {comment}".strip()
    return Result(kind, status=code, error=error, peer_certificate=peer_certificate)


# C-FIND and C-MOVE answer statuses (PS3.4 C.4): pending carries a match or a progress count.
PENDING_STATUSES = {0xFF00, 0xFF01}
MOVE_DESTINATION_UNKNOWN = 0xA801


@dataclass(frozen=True)
class FindResult:
    result: Result  # DELIVERED when the peer answered success; else why not
    matches: list[Dataset]


@dataclass(frozen=True)
class MoveResult:
    result: Result  # DELIVERED: every sub-operation completed (or warned); else why not
    completed: int = 0
    failed: int = 0
    warning: int = 0


def _query_status(code: int) -> str:
    """C-FIND/C-MOVE final statuses: A7xx out of resources (and FE00, cancelled) retry; B000 (some
    sub-operations failed) retries what is missing; A801 (unknown move destination), A900, Cxxx stop."""
    if code == 0x0000:
        return DELIVERED
    if 0xA700 <= code <= 0xA7FF or code in (0xFE00, 0xB000):
        return TRANSIENT
    return PERMANENT


def find(target: Target, identifiers: list[Dataset]) -> list[FindResult]:
    """C-FIND (Study Root) each identifier over one association; one FindResult per identifier, in order.
    Never raises for network or peer trouble."""
    assoc, _, failure = _associate(target, [(StudyRootQueryRetrieveInformationModelFind, None)])
    if failure is not None:
        return [FindResult(failure, []) for _ in identifiers]
    try:
        return [_find_one(assoc, identifier) for identifier in identifiers]
    finally:
        if assoc.is_established:
            assoc.release()


def _find_one(assoc, identifier: Dataset) -> FindResult:
    if not assoc.is_established:
        return FindResult(Result(TRANSIENT, error="association ended before this query"), [])
    matches = []
    try:
        for status, match in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if "Status" not in status:
                return FindResult(Result(TRANSIENT, error="no response to C-FIND (timeout or abort)"), matches)
            code = int(status.Status)
            if code in PENDING_STATUSES:
                if match is not None:
                    matches.append(match)
                continue
            kind = _query_status(code)
            error = "" if kind == DELIVERED else f"C-FIND status 0x{code:04X} {status.get('ErrorComment', '')}"
            return FindResult(Result(kind, status=code, error=error.strip()), matches)
    except (OSError, RuntimeError, ValueError) as exc:
        return FindResult(Result(TRANSIENT, error=f"C-FIND failed: {exc}"), matches)
    return FindResult(Result(TRANSIENT, error="C-FIND ended without a final status"), matches)


def move(target: Target, identifier: Dataset, move_destination: str) -> MoveResult:
    """C-MOVE (Study Root) `identifier` to the AE title `move_destination`, which the target must know.
    Never raises for network or peer trouble."""
    assoc, _, failure = _associate(target, [(StudyRootQueryRetrieveInformationModelMove, None)])
    if failure is not None:
        return MoveResult(failure)
    counts = {"completed": 0, "failed": 0, "warning": 0}
    try:
        for status, _ in assoc.send_c_move(identifier, move_destination, StudyRootQueryRetrieveInformationModelMove):
            if "Status" not in status:
                return MoveResult(Result(TRANSIENT, error="no response to C-MOVE (timeout or abort)"), **counts)
            for key, keyword in (
                ("completed", "NumberOfCompletedSuboperations"),
                ("failed", "NumberOfFailedSuboperations"),
                ("warning", "NumberOfWarningSuboperations"),
            ):
                if status.get(keyword) is not None:
                    counts[key] = int(status.get(keyword))
            code = int(status.Status)
            if code in PENDING_STATUSES:
                continue
            return MoveResult(_move_outcome(code, status, move_destination, counts), **counts)
    except (OSError, RuntimeError, ValueError) as exc:
        return MoveResult(Result(TRANSIENT, error=f"C-MOVE failed: {exc}"), **counts)
    finally:
        if assoc.is_established:
            assoc.release()
    return MoveResult(Result(TRANSIENT, error="C-MOVE ended without a final status"), **counts)


def _move_outcome(code: int, status: Dataset, move_destination: str, counts: dict) -> Result:
    if code == MOVE_DESTINATION_UNKNOWN:
        return Result(
            PERMANENT, status=code, error=f"the archive does not know the move destination {move_destination}"
        )
    kind = _query_status(code)
    if kind == DELIVERED and counts["failed"]:
        kind = TRANSIENT  # success with failed sub-operations is no success
    if kind == DELIVERED:
        return Result(DELIVERED, status=code)
    comment = str(status.get("ErrorComment", "")).strip()
    error = f"C-MOVE status 0x{code:04X}: {counts['completed']} sent, {counts['failed']} failed" + (
        f" ({comment})" if comment else ""
    )
    if kind == PERMANENT and not counts["completed"]:
        # Orthanc (1.10) answers an unknown move destination with C000, not A801.
        error += f"; does the archive know the move destination {move_destination} (AE title, host, port)?"
    return Result(kind, status=code, error=error)
