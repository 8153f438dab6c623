"""Query and retrieve: who may, what matches, and the ledger of what was sent. The faces (dimse.py for
C-FIND/C-MOVE/C-GET, apps/dicomweb for QIDO-RS/WADO-RS) parse and format; the work is here.

A retrieval sends through routing's one sender (C-STORE or STOW-RS, TLS as the destination says) and through
the destination's transform profile when it has one: a destination that receives de-identified copies never
receives an original because someone asked for it by C-MOVE. Instances whose files were purged are failed
sub-operations with their reason, never success.
"""

import logging
import time
from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.routing import dicom_send, health, transformed
from apps.routing.models import Destination
from apps.studies.models import FileState, Instance

from . import query as q
from .models import Retrieval, RetrievalItem

logger = logging.getLogger(__name__)

# A C-MOVE or C-GET answers its counts in US elements (PS3.4 C.4.2.1.4): no more sub-operations than that.
MAX_SUBOPERATIONS = 65535
# Keys of a retrieve's identifier recorded in the ledger and the audit trail: they identify, they do not name.
IDENTIFYING = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class TooMany(q.QueryError):
    pass


def find(*, query: q.Query, caller: str, source: str, face: str, limit: int | None = None, offset: int = 0):
    """The matches of `query` (query.search), with the query logged and audited without its values."""
    limit = settings.QR_MAX_RESULTS if limit is None else min(limit, settings.QR_MAX_RESULTS)
    results = q.search(query, limit=limit, offset=offset, fold_person_names=settings.QR_FOLD_PERSON_NAMES)
    used = ",".join(a.keyword for a, _ in query.matching()) or "none"
    cut = f", cut at {limit}" if results.more else ""
    count = len(results.rows)
    logger.info("%s query by %s: %s level, keys %s, %d matches%s", face, caller, query.level, used, count, cut)
    AuditEvent.objects.create(
        username=caller[:150],
        action=f"{face}.query",
        source_address=source or None,
        detail=f"{query.model} root, {query.level} level, matching on {used}: {len(results.rows)} matches{cut}",
    )
    return results


def retrieve_instances(query: q.Query) -> list[Instance]:
    """Every instance the identifier names, held or purged (a purged one is a failed sub-operation).

    A retrieve names what it wants by unique keys (PS3.4 C.4.2.2.1); other keys it carries are matched too,
    as a relational query would. One with no key at all is refused: it would send everything."""
    conditions = q.conditions(query, q.IMAGE)
    if not conditions:
        raise q.QueryError("a retrieve names what it wants (PatientID, StudyInstanceUID, ...)")
    instances = list(
        Instance.objects.filter(conditions)
        .select_related("series", "study")
        .order_by("study_id", "series_id", "pk")[: MAX_SUBOPERATIONS + 1]
    )
    if len(instances) > MAX_SUBOPERATIONS:
        raise TooMany(f"more than {MAX_SUBOPERATIONS} instances: retrieve by study or series", status=0xA701)
    return instances


def move_destination(ae_title: str) -> Destination | None:
    """The enabled destination a C-MOVE names by its AE title (the first configured, if several share it)."""
    return Destination.objects.filter(ae_title=ae_title.strip(), enabled=True).order_by("pk").first()


def caller_destination(ae_title: str) -> Destination | None:
    """A C-GET caller that is also one of our destinations with a transform profile gets what that destination
    gets: through the profile. Others get the stored bytes."""
    return (
        Destination.objects.filter(ae_title=ae_title.strip(), enabled=True, transform__isnull=False)
        .select_related("transform")
        .order_by("pk")
        .first()
    )


def sender_for(destination: Destination, *, originator: tuple[str, int]):
    """(send, target) for a C-MOVE's sub-operations: routing's sender, naming the request they serve."""
    send, target = health.sender(destination)
    if isinstance(target, dicom_send.Target):
        target = replace(target, originator=originator)
    return send, target


@dataclass
class Run:
    """One retrieval as it runs: its ledger row, its counts, and the files to send for the instances that can be.

    Each outcome is recorded in memory at once and written to the ledger in batches (every FLUSH_EVERY
    outcomes or FLUSH_SECONDS, and at the end): two statements per instance cost as much as sending it."""

    FLUSH_EVERY = 50
    FLUSH_SECONDS = 1.0

    retrieval: Retrieval
    instances: list[Instance]  # to send, in the order of `files`
    files: list[dicom_send.File]
    sha256: list[str]
    remaining: int
    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_uids: list[str] = field(default_factory=list)
    prepared: transformed.Prepared | None = None  # its transformed copies, removed at the end
    unwritten: list[RetrievalItem] = field(default_factory=list)
    written_at: float = field(default_factory=time.monotonic)

    def record(self, instance: Instance, outcome: str, *, status=None, error: str = "", sha256: str = "") -> None:
        self.unwritten.append(
            RetrievalItem(
                retrieval=self.retrieval,
                instance=instance,
                sop_instance_uid=instance.sop_instance_uid,
                outcome=outcome,
                status=status,
                error=error[:500],
                sent_sha256=sha256,
            )
        )
        self.remaining -= 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        if outcome == RetrievalItem.Outcome.FAILED:
            self.failed_uids.append(instance.sop_instance_uid)
        if len(self.unwritten) >= self.FLUSH_EVERY or time.monotonic() - self.written_at >= self.FLUSH_SECONDS:
            self.write()

    def write(self) -> None:
        """The outcomes recorded since the last write, and the counts, in one transaction."""
        with transaction.atomic():
            RetrievalItem.objects.bulk_create(self.unwritten)
            Retrieval.objects.filter(pk=self.retrieval.pk).update(
                completed=self.completed, warning=self.warning, failed=self.failed
            )
        self.unwritten = []
        self.written_at = time.monotonic()

    def answered(self, index: int, result: dicom_send.Result) -> None:
        """The peer's answer for files[index]."""
        outcome = {dicom_send.DELIVERED: "completed", dicom_send.WARNING: "warning"}.get(result.kind, "failed")
        instance = self.instances[index]
        if outcome == "failed":
            logger.warning(
                "retrieval %s: instance %s not stored by the peer: %s", self.retrieval.pk, instance.pk, result.error
            )
        self.record(instance, outcome, status=result.status, error=result.error, sha256=self.sha256[index])

    def final_status(self) -> int:
        """PS3.4 C.4.2.1.5: success when every sub-operation did, a failure when all failed, else warning."""
        if not self.failed and not self.warning:
            return 0x0000
        if self.failed and not self.completed and not self.warning:
            return 0xA702
        return 0xB000

    def finish(self, status: int, *, cancelled: bool = False) -> None:
        if self.prepared is not None:
            transformed.clean(self.prepared)
        self.write()
        Retrieval.objects.filter(pk=self.retrieval.pk).update(
            status=status, cancelled=cancelled, finished_at=timezone.now()
        )
        logger.info(
            "retrieval %s (%s by %s) ended 0x%04X: %d completed, %d warning, %d failed%s",
            self.retrieval.pk,
            self.retrieval.kind,
            self.retrieval.calling_ae_title,
            status,
            self.completed,
            self.warning,
            self.failed,
            ", cancelled" if cancelled else "",
        )


def retrieval_start(
    *,
    kind: str,
    caller: str,
    source: str,
    query: q.Query,
    instances: list[Instance],
    destination: Destination | None,
    move_destination: str = "",
) -> Run:
    """Record the retrieval, fail at once what cannot be sent (purged files, instances the profile holds),
    and prepare the files of the rest (transformed copies where the receiver has a profile)."""
    keys = {k: v for k, v in query.keys if k in IDENTIFYING and v}
    with transaction.atomic():
        retrieval = Retrieval.objects.create(
            kind=kind,
            calling_ae_title=caller[:16],
            peer_address=source[:64],
            destination=destination,
            move_destination=move_destination[:16],
            level=query.level,
            keys=keys,
            requested=len(instances),
        )
        AuditEvent.objects.create(
            username=caller[:150],
            action=f"dicom.{kind}",
            source_address=source or None,
            detail=f"{query.level} level, {len(instances)} instances to {move_destination or caller}",
        )
    run = Run(retrieval=retrieval, instances=[], files=[], sha256=[], remaining=len(instances))
    stored = [i for i in instances if i.file_state == FileState.STORED]
    for instance in instances:
        if instance.file_state != FileState.STORED:
            reason = f"file purged ({instance.purge_reason or 'purge'}) on {instance.purged_at or '?'}"
            logger.warning("retrieval %s: instance %s cannot be sent: %s", retrieval.pk, instance.pk, reason)
            run.record(instance, "failed", error=reason)
    profile = destination.transform if destination is not None else None
    prepared = transformed.prepare_for(profile, stored, instance=lambda i: i, label=f"retrieve-{retrieval.pk}")
    run.prepared = prepared
    sendable = {i.pk for i in prepared.sendable}
    for instance in stored:
        if instance.pk in prepared.held:
            logger.warning("retrieval %s: instance %s held: %s", retrieval.pk, instance.pk, prepared.held[instance.pk])
            run.record(instance, "failed", error=prepared.held[instance.pk])
        elif instance.pk not in sendable:
            run.record(instance, "failed", error="its transformed copy could not be written (see the log)")
    run.instances, run.files, run.sha256 = prepared.sendable, prepared.files, prepared.sha256
    return run
