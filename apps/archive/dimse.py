"""The query/retrieve face on DIMSE: C-FIND, C-MOVE and C-GET on the SCP's ports (plain and TLS).

runscp composes it into the SCP (scp.serve(extra=[QueryRetrieve(...)])): ingest imports nothing of it.
- C-FIND is pynetdicom's service with our EVT_C_FIND handler over the query engine (query.py), sending one
  final response only (3.0.4 follows a final warning with a final success).
- C-MOVE and C-GET are ours (`RetrieveService`): pynetdicom 3.0.4's own open a sub-association of pynetdicom's
  and send decoded datasets, which would bypass the router's sender (its TLS, the destination's transform
  profile, its outcome classes) and re-encode what we hold. Ours send the stored files (or the destination's
  transformed copies) byte for byte through routing's sender for C-MOVE, and over the requesting association
  for C-GET, recording every sub-operation in the retrieval ledger (models.py). The service class is swapped
  in for the Query/Retrieve SOP classes only (`install`), a private part of pynetdicom listed in
  apps/core/internals.py: the system check refuses to start on a version it was not written for.
Who may: allow-list entries with "may query" / "may retrieve" (services.caller_may); nobody by default.
pynetdicom logs whole request and response identifiers (names, birth dates) at INFO by default: turned off.
"""

import logging
import time
import weakref
from io import BytesIO

from django.db import DatabaseError, connection
from pydicom.dataset import Dataset
from pynetdicom import _config, evt, sop_class
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.service_class import QueryRetrieveServiceClass

from apps.core import internals
from apps.ingest import services as ingest
from apps.ingest.scp import peer_of

from . import query as q
from . import services

logger = logging.getLogger(__name__)

_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

FIND_MODELS = {
    sop_class.PatientRootQueryRetrieveInformationModelFind: q.PATIENT_ROOT,
    sop_class.StudyRootQueryRetrieveInformationModelFind: q.STUDY_ROOT,
}
MOVE_MODELS = {
    sop_class.PatientRootQueryRetrieveInformationModelMove: q.PATIENT_ROOT,
    sop_class.StudyRootQueryRetrieveInformationModelMove: q.STUDY_ROOT,
}
GET_MODELS = {
    sop_class.PatientRootQueryRetrieveInformationModelGet: q.PATIENT_ROOT,
    sop_class.StudyRootQueryRetrieveInformationModelGet: q.STUDY_ROOT,
}
PENDING, CANCEL, NOT_AUTHORISED, OUT_OF_RESOURCES = 0xFF00, 0xFE00, 0x0124, 0xA700
CUT = 0xB001  # C-FIND: matching reached the response limit
UNKNOWN_DESTINATION = 0xA801
SEND_AHEAD = 8  # C-FIND responses queued for the network at most before the next is encoded
_SKIPPED = {"QueryRetrieveLevel", "SpecificCharacterSet"}


# -- identifiers ------------------------------------------------------------------------------------


def query_from_identifier(identifier: Dataset, *, model: str) -> q.Query:
    """The query a C-FIND, C-MOVE or C-GET identifier asks: its level and every key with its value as text."""
    keys = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _SKIPPED or element.tag.is_private or element.tag.group == 0x0002:
            continue
        keys.append((keyword, "" if element.VR == "SQ" else _text(element.value)))
    return q.query_make(level=str(identifier.get("QueryRetrieveLevel", "")), model=model, keys=keys)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def find_response(identifier: Dataset, query: q.Query, row: dict, *, ae_title: str) -> Dataset:
    """One match: every key asked, with the router's value or empty (a key it does not hold), the unique keys
    of the level and above, and the level."""
    out = Dataset()
    out.QueryRetrieveLevel = query.level
    wanted = {e.keyword: e for e in identifier if e.keyword and e.keyword not in _SKIPPED}
    for keyword in query.returned():
        value = row.get(keyword)
        if keyword == "RetrieveAETitle":
            value = ae_title
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        if value is not None:
            setattr(out, keyword, value)
        elif keyword in wanted:
            element = wanted[keyword]
            out.add_new(element.tag, element.VR, [] if element.VR == "SQ" else None)
    if any(isinstance(v, str) and not v.isascii() for v in row.values()):
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


# -- who may ----------------------------------------------------------------------------------------


def may(assoc, what: str) -> bool | None:
    """Whether the caller of `assoc` may `what` ("query", "retrieve"); None if the database cannot say.

    The association's thread keeps its database connection from request to request (the SCP closes it when
    the association ends; a failed query closes it here): opening one per C-FIND would cost more than the
    query itself."""
    allow_list = _allow_lists.get(assoc)
    if allow_list is None:
        try:
            allow_list = _allow_lists[assoc] = ingest.allowed_callers()
        except DatabaseError:
            connection.close()
            return None
    return ingest.caller_may(allow_list, ae_title=assoc.requestor.ae_title, peer=peer_of(assoc), what=what)


# The allow-list as an association first read it: read once per association, as its admission was (a change
# applies from the caller's next association), not at every request.
_allow_lists: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _refusal(assoc, what: str) -> tuple[int, str] | None:
    allowed = may(assoc, what)
    if allowed is None:
        return OUT_OF_RESOURCES, "the router's database is unavailable; try again"
    if not allowed:
        logger.warning(
            "%s refused: %s at %s may not %s (allow-list)",
            what,
            assoc.requestor.ae_title.strip(),
            assoc.requestor.address,
            what,
        )
        return NOT_AUTHORISED, f"this calling AE title may not {what}"
    return None


# -- C-FIND -----------------------------------------------------------------------------------------


class QueryRetrieve:
    """The contexts and handlers the SCP adds for query/retrieve; C-MOVE and C-GET need `install()` too."""

    def __init__(self, *, ae_title: str) -> None:
        self.ae_title = ae_title

    def configure(self, ae) -> None:
        for uid in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
            ae.add_supported_context(uid)

    def handlers(self) -> list:
        return [(evt.EVT_C_FIND, self.on_find)]

    def on_find(self, event):
        assoc = event.assoc
        if refusal := _refusal(assoc, "query"):
            yield _status(*refusal), None
            return
        try:
            identifier = event.identifier
            query = query_from_identifier(identifier, model=FIND_MODELS[event.request.AffectedSOPClassUID])
        except q.QueryError as exc:
            yield _status(exc.status, str(exc)), None
            return
        except Exception as exc:  # noqa: BLE001 - an identifier pydicom cannot decode: say so, never crash
            yield _status(q.UNABLE_TO_PROCESS, f"identifier not understood ({type(exc).__name__})"), None
            return
        caller, source = assoc.requestor.ae_title.strip(), assoc.requestor.address
        try:
            results = services.find(query=query, caller=caller, source=source, face="dicom")
        except DatabaseError:
            connection.close()
            yield _status(OUT_OF_RESOURCES, "the router's database is unavailable; try again"), None
            return
        for row in results.rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, find_response(identifier, query, row, ae_title=self.ae_title)
        if results.more:
            yield _status(CUT, f"more matches than {len(results.rows)}: narrow the query"), None


# -- C-MOVE and C-GET -------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


class RetrieveService(QueryRetrieveServiceClass):
    """pynetdicom's Query/Retrieve service class with C-MOVE and C-GET of our own (see the module's doc).

    Runs in the requesting association's thread, as pynetdicom's does; a C-CANCEL is seen between
    sub-operations (pynetdicom records it from its DUL thread)."""

    def _c_find_scp(self, req, context) -> None:
        """pynetdicom's C-FIND, with two changes to how its responses are sent.

        - One final response only: 3.0.4 sends a warning status (B001: the result cap) and then goes on to a
          final success as well; the caller, already releasing, gets a second final answer it did not expect.
        - At the network's pace: pynetdicom queues each response for its DUL thread without waiting, so the
          handler would encode every match (up to QR_MAX_RESULTS) before the first left, holding them all in
          memory, and a C-CANCEL would come too late to stop anything. A pending response waits while more
          than SEND_AHEAD are still queued (at most the association's network timeout)."""
        dimse = self.dimse
        send = dimse.send_msg
        queued = self.assoc.dul.to_provider_queue
        finished = False

        def send_until_final(rsp, context_id) -> None:
            nonlocal finished
            if finished:
                return
            finished = rsp.Status not in (PENDING, 0xFF01)
            if not finished:
                deadline = time.monotonic() + (self.assoc.network_timeout or 60)
                while queued.qsize() > SEND_AHEAD and self.assoc.is_established and time.monotonic() < deadline:
                    time.sleep(0.001)  # the DUL thread drains the queue as the peer takes the data
            send(rsp, context_id)

        dimse.send_msg = send_until_final
        try:
            super()._c_find_scp(req, context)
        finally:
            del dimse.send_msg

    def _move_scp(self, req, context) -> None:
        self._retrieve(req, context, C_MOVE(), "move", MOVE_MODELS)

    def _get_scp(self, req, context) -> None:
        self._retrieve(req, context, C_GET(), "get", GET_MODELS)

    def _retrieve(self, req, context, rsp, kind: str, models: dict) -> None:
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        answer = _Answer(self.dimse, context, rsp)
        try:
            run = self._start(req, context, kind, models, answer)
        except DatabaseError:
            connection.close()
            answer.final(OUT_OF_RESOURCES, comment="the router's database is unavailable; try again")
            return
        if run is None:
            return
        try:
            self._send(req, kind, run, answer)
        except _Cancelled:
            run.finish(CANCEL, cancelled=True)
            answer.final(CANCEL, run)
            return
        except DatabaseError:
            connection.close()
            run.finish(OUT_OF_RESOURCES)
            answer.final(OUT_OF_RESOURCES, run, comment="the router's database is unavailable; try again")
            return
        status = run.final_status()
        run.finish(status)
        answer.final(status, run)

    def _start(self, req, context, kind: str, models: dict, answer: "_Answer"):
        """The retrieval's run, or None once a final answer was sent (refused, bad identifier, nothing)."""
        assoc = self.assoc
        if refusal := _refusal(assoc, "retrieve"):
            answer.final(refusal[0], comment=refusal[1])
            return None
        ts = context.transfer_syntax[0]
        try:
            identifier = decode(req.Identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            query = query_from_identifier(identifier, model=models[context.abstract_syntax])
            instances = services.retrieve_instances(query)
        except q.QueryError as exc:
            answer.final(exc.status, comment=str(exc))
            return None
        except (ValueError, TypeError, AttributeError, KeyError, EOFError) as exc:
            answer.final(q.UNABLE_TO_PROCESS, comment=f"identifier not understood ({type(exc).__name__})")
            return None
        caller, source = assoc.requestor.ae_title.strip(), assoc.requestor.address
        destination, move_destination = None, ""
        if kind == "move":
            move_destination = str(req.MoveDestination or "").strip()
            destination = services.move_destination(move_destination)
            if destination is None:
                logger.warning("C-MOVE by %s: move destination %r is not a known destination", caller, move_destination)
                answer.final(UNKNOWN_DESTINATION, comment="move destination unknown")
                return None
        else:
            destination = services.caller_destination(caller)
        if not instances:
            answer.final(0x0000)
            return None
        return services.retrieval_start(
            kind=kind,
            caller=caller,
            source=source,
            query=query,
            instances=instances,
            destination=destination,
            move_destination=move_destination,
        )

    def _send(self, req, kind: str, run: services.Run, answer: "_Answer") -> None:
        def on_sent(index, result) -> None:
            run.answered(index, result)
            if run.remaining:
                answer.pending(run)
            if self.is_cancelled(req.MessageID):
                raise _Cancelled

        if not run.files:
            return
        if self.is_cancelled(req.MessageID):
            raise _Cancelled
        answer.pending(run)
        if kind == "move":
            caller = self.assoc.requestor.ae_title.strip()
            send, target = services.sender_for(run.retrieval.destination, originator=(caller, req.MessageID))
            send(target, run.files, on_sent=on_sent)
        else:
            services.dicom_send.send_over(self.assoc, run.files, on_sent, first_message_id=req.MessageID + 1)


class _Answer:
    """The C-MOVE/C-GET responses of one request: pending ones with the counts, then the final one.

    Pending responses are optional (PS3.4 C.4.2.3.1, C.4.3.3.1): one before the first sub-operation, then
    one every PENDING_EVERY sub-operations or PENDING_SECONDS, so a caller sees progress without a message
    per instance (which cost a tenth of a move's time)."""

    PENDING_EVERY = 50
    PENDING_SECONDS = 1.0

    def __init__(self, dimse, context, rsp) -> None:
        self.dimse, self.context_id, self.rsp = dimse, context.context_id, rsp
        self.syntax = context.transfer_syntax[0]
        self.told: tuple[int, float] | None = None  # (sub-operations left, when) at the last pending response

    def pending(self, run: services.Run) -> None:
        now = time.monotonic()
        if self.told is not None:
            left, at = self.told
            if left - run.remaining < self.PENDING_EVERY and now - at < self.PENDING_SECONDS:
                return
        self.told = (run.remaining, now)
        self._send(PENDING, run, remaining=True)

    def final(self, status: int, run: services.Run | None = None, *, comment: str = "") -> None:
        # Remaining is sent with a cancel only (C.4.2.1.6); failed UIDs with a failure, warning or cancel.
        self._send(status, run, remaining=status == CANCEL, comment=comment, failed=status not in (0x0000, PENDING))

    def _send(self, status, run, *, remaining=False, comment="", failed=False) -> None:
        rsp = self.rsp
        rsp.Status = status
        rsp.Identifier = None
        rsp.NumberOfRemainingSuboperations = run.remaining if run is not None and remaining else None
        for name in ("Completed", "Failed", "Warning"):
            setattr(rsp, f"NumberOf{name}Suboperations", getattr(run, name.lower()) if run is not None else None)
        if comment:
            rsp.ErrorComment = comment[:64]
        if failed and run is not None and run.failed_uids:
            listing = Dataset()
            listing.FailedSOPInstanceUIDList = run.failed_uids
            encoded = encode(listing, self.syntax.is_implicit_VR, self.syntax.is_little_endian, self.syntax.is_deflated)
            rsp.Identifier = BytesIO(encoded)
        self.dimse.send_msg(rsp, self.context_id)


# -- installing the retrieve service ---------------------------------------------------------------

_RETRIEVE_CLASSES = frozenset({*MOVE_MODELS, *GET_MODELS, *FIND_MODELS})
PATCH_FITS = not internals.patch_problems(internals.patch_of(__name__))


def install() -> None:
    """Serve the Query/Retrieve SOP classes with `RetrieveService` in this process's associations."""
    import pynetdicom.association as association

    if not PATCH_FITS:
        raise RuntimeError("pynetdicom is not the version the retrieve service was written for (core.E005)")
    if getattr(association.uid_to_service_class, "router_retrieve", False):
        return
    original = association.uid_to_service_class

    def uid_to_service_class(uid):
        return RetrieveService if uid in _RETRIEVE_CLASSES else original(uid)

    uid_to_service_class.router_retrieve = True
    association.uid_to_service_class = uid_to_service_class
