"""Receiving instances by STOW-RS with the custody of the SCP: each part of a request is taken as a C-STORE is.

A part is a Part 10 file. Its file meta says what a C-STORE's command and presentation context say (SOP
class and instance, transfer syntax); the rest is streamed into a spool temp file behind a file meta of
ours, the file the SCP would have written (apps/ingest/streaming.py), and ingest's one custody function
takes it from there: inspection, UIDs, free-space watermark, fsync and rename, the received row committed.
Only then is the instance reported as stored.
"""

import logging
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.filewriter import write_file_meta_info
from pynetdicom.dsutils import create_file_meta
from pynetdicom.presentation import StoragePresentationContexts

from apps.ingest import services as ingest
from apps.ingest.scp import MAX_URGENCY_VALUES, TRANSFER_SYNTAXES, StudiesReceived
from apps.ingest.storage import Spool, TempFile

from . import multipart, part10

logger = logging.getLogger(__name__)

# Failure reasons of PS3.18 Table I.2-2 beside the C-STORE statuses ingest answers (0xA700, 0xA900, 0xC000).
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

# What the SCP accepts (apps/ingest/scp.py build_ae): every storage SOP class, the transfer syntaxes it
# stores byte for byte (no deflate).
STORAGE_SOP_CLASSES = frozenset(str(context.abstract_syntax) for context in StoragePresentationContexts)
ACCEPTED_TRANSFER_SYNTAXES = frozenset(str(syntax) for syntax in TRANSFER_SYNTAXES)
DICOM_PART_TYPE = "application/dicom"


@dataclass(frozen=True)
class InstanceResult:
    sop_class_uid: str  # "" when the part never said (it was not DICOM)
    sop_instance_uid: str
    status: int  # 0x0000 stored, else the failure reason
    comment: str = ""


@dataclass
class Receipt:
    stored: list[InstanceResult] = field(default_factory=list)
    failed: list[InstanceResult] = field(default_factory=list)
    # Study Instance UID -> what its instances said of its urgency, as the SCP hands them over.
    studies: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    # Why the body could not be read to its end; the parts before it keep their outcome.
    body_error: multipart.BodyError | None = None

    def add(self, result: InstanceResult, outcome: ingest.Outcome | None = None) -> None:
        if result.status != ingest.SUCCESS:
            self.failed.append(result)
            return
        self.stored.append(result)
        if outcome is not None:
            urgency = self.studies.setdefault(outcome.study_instance_uid, set())
            if len(urgency) < MAX_URGENCY_VALUES:
                urgency.update(outcome.urgency)


def instances_receive(
    *,
    stream: BinaryIO,
    boundary: str,
    max_bytes: int,
    spool: Spool,
    origin: ingest.Origin,
    study_instance_uid: str | None,
    on_studies_received: StudiesReceived,
) -> Receipt:
    """Take custody of each part of a multipart/related body as it arrives, and say what became of each.

    1. A part's first bytes are held until its file meta is read: not DICOM answers 0xC000, a transfer
       syntax the SCP does not store 0xC122, a SOP class that is not a storage class 0x0122.
    2. Then the part is written to a spool temp file as it arrives (our file meta, then its dataset as sent).
    3. At its closing boundary, ingest's `instance_receive` takes custody (or says why not: 0xC000, 0xA900
       for UIDs that differ from the file meta or a study that differs from `study_instance_uid`, 0xA700).
    4. A body that breaks off (cut short, malformed, over `max_bytes`) fails the part being read (0xA700
       when too large, else 0xC000) and removes its temp file; the parts before it keep their outcome.
    5. The studies stored in are handed over when the body ends, however it ended, as the SCP does at
       association end.
    """
    receipt = Receipt()
    current: list[_PartFile] = []

    def new_part(headers: dict[str, str]) -> _PartFile:
        part = _PartFile(headers, spool=spool, origin=origin, study_instance_uid=study_instance_uid, receipt=receipt)
        current[:] = [part]
        return part

    try:
        multipart.parts_read(stream, boundary=boundary, max_bytes=max_bytes, new_part=new_part)
    except multipart.BodyError as exc:
        receipt.body_error = exc
        if current and not current[0].done:
            part = current[0]
            reason = ingest.OUT_OF_RESOURCES if isinstance(exc, multipart.TooLarge) else ingest.CANNOT_UNDERSTAND
            receipt.add(part.result(*part.refusal) if part.refusal else part.result(reason, str(exc)))
        logger.warning("STOW-RS from %s: %s", origin.calling_ae_title, exc)
    finally:
        _hand_over(receipt.studies, on_studies_received)
    stored, failed = len(receipt.stored), len(receipt.failed)
    logger.info("STOW-RS from %s: %d instances stored, %d failed", origin.calling_ae_title, stored, failed)
    return receipt


def _hand_over(studies: dict[str, set[tuple[str, str]]], on_studies_received: StudiesReceived) -> None:
    if not studies:
        return
    try:
        on_studies_received(studies)
    except Exception:  # noqa: BLE001 - the instances are recorded: the reconciler starts what was not started
        logger.exception("handing %d studies to the pipeline failed; the reconciler will start them", len(studies))


class _PartFile:
    """One part: its head held until the file meta is read, then the part streamed to a temp file."""

    def __init__(
        self,
        headers: dict[str, str],
        *,
        spool: Spool,
        origin: ingest.Origin,
        study_instance_uid: str | None,
        receipt: Receipt,
    ) -> None:
        self.spool = spool
        self.origin = origin
        self.study_instance_uid = study_instance_uid
        self.receipt = receipt
        self.head = bytearray()
        self.meta: part10.FileMeta | None = None
        self.temp: TempFile | None = None
        self.refusal: tuple[int, str] | None = None
        self.done = False
        content_type = headers.get("content-type", DICOM_PART_TYPE).partition(";")[0].strip().lower()
        if content_type != DICOM_PART_TYPE:
            self.refusal = (ingest.CANNOT_UNDERSTAND, "a part that is not application/dicom")

    def write(self, data: memoryview) -> None:
        if self.refusal is not None:
            return  # the rest of a refused part is read and dropped
        if self.temp is not None:
            self.temp.write(data)
            return
        self.head += data
        self._read_head(last=False)

    def end(self) -> None:
        if self.temp is None and self.refusal is None:
            self._read_head(last=True)
        self.done = True
        if self.refusal is not None:
            self.receipt.add(self.result(*self.refusal))
            self._discard()
            return
        assert self.meta is not None and self.temp is not None
        try:
            outcome = ingest.instance_receive(
                spool=self.spool,
                received=self.temp,
                transfer_syntax=self.meta.transfer_syntax,
                sop_class_uid=self.meta.sop_class_uid,
                sop_instance_uid=self.meta.sop_instance_uid,
                origin=self.origin,
                study_instance_uid=self.study_instance_uid,
            )
        finally:
            self._discard()
        self.receipt.add(self.result(outcome.status, outcome.comment), outcome)

    def abandon(self) -> None:
        self._discard()

    def result(self, status: int, comment: str = "") -> InstanceResult:
        meta = self.meta
        return InstanceResult(
            sop_class_uid=meta.sop_class_uid if meta else "",
            sop_instance_uid=meta.sop_instance_uid if meta else "",
            status=status,
            comment=comment,
        )

    def _read_head(self, *, last: bool) -> None:
        try:
            found = part10.file_meta(self.head)
        except part10.NotPart10 as exc:
            self._refuse(ingest.CANNOT_UNDERSTAND, str(exc))
            return
        if found is None:
            if last:
                self._refuse(ingest.CANNOT_UNDERSTAND, "the part ends before its dataset")
            return
        self.meta, start = found
        if self.meta.transfer_syntax not in ACCEPTED_TRANSFER_SYNTAXES:
            self._refuse(TRANSFER_SYNTAX_NOT_SUPPORTED, "transfer syntax not stored here")
        elif self.meta.sop_class_uid not in STORAGE_SOP_CLASSES:
            self._refuse(SOP_CLASS_NOT_SUPPORTED, "not a storage SOP class")
        else:
            self.temp = self.spool.open_temp()
            # The preamble and file meta as pynetdicom writes them before a C-STORE's dataset.
            self.temp.write(b"\0" * part10.PREAMBLE + b"DICM")
            file_meta = create_file_meta(
                sop_class_uid=self.meta.sop_class_uid,
                sop_instance_uid=self.meta.sop_instance_uid,
                transfer_syntax=self.meta.transfer_syntax,
            )
            write_file_meta_info(self.temp, file_meta)
            self.temp.write(memoryview(self.head)[start:])
        self.head = bytearray()

    def _refuse(self, status: int, comment: str) -> None:
        self.refusal = (status, comment)
        self.head = bytearray()
        logger.warning("STOW-RS from %s: part refused (0x%04X): %s", self.origin.calling_ae_title, status, comment)

    def _discard(self) -> None:
        if self.temp is not None:
            self.temp.discard()
            self.temp = None
