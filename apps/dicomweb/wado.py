"""WADO-RS (PS3.18 10.4): a study, series or instance as the stored Part 10 files, byte for byte, in a
multipart/related body streamed from disk; or its metadata, each instance's header as DICOM JSON.

What a request names is found by the code C-MOVE and C-GET use (archive's `retrieve_instances`); only held
instances are sent. The router never transcodes: a client that asks for a transfer syntax other than the one
an instance is stored in gets 406.
"""

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from pydicom import dcmread

from apps.archive import query as q
from apps.archive.services import retrieve_instances
from apps.audit.models import AuditEvent
from apps.ingest.inspect import UID_PATTERN
from apps.studies.models import FileState, Instance

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
CHUNK = 256 * 1024  # what one read from disk sends: memory stays this, whatever the study's size
ANY = None  # any transfer syntax: the stored one


class NotAcceptable(Exception):
    pass


class NotFound(Exception):
    pass


# -- Accept -------------------------------------------------------------------------------------------


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    """The media ranges of an Accept header with their parameters (names lower-cased, quotes removed); a
    range with q=0 is refused by the client and left out."""
    ranges = []
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        if not media:
            continue
        parsed = {}
        for param in params:
            name, _, value = param.partition("=")
            parsed[name.strip().lower()] = value.strip().strip('"')
        if parsed.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        ranges.append((media.lower(), parsed))
    return ranges


def syntaxes_accepted(accept: str) -> set[str] | None:
    """The transfer syntaxes a WADO-RS retrieve's Accept allows for multipart/related; type="application/dicom";
    ANY when the stored one will do (no transfer-syntax parameter, `*`, `*/*`, no header). We serve the stored
    syntax where PS3.18 8.7.3.5.2 defaults to Explicit VR Little Endian: the router never transcodes."""
    if not accept.strip():
        return ANY
    syntaxes: set[str] = set()
    for media, params in _media_ranges(accept):
        if media in ("*/*", "multipart/*") or (media == "multipart/related" and params.get("type", DICOM) == DICOM):
            syntax = params.get("transfer-syntax", "*")
            if syntax == "*":
                return ANY
            syntaxes.add(syntax)
    if not syntaxes:
        raise NotAcceptable(f'This resource is served as multipart/related; type="{DICOM}" only.')
    return syntaxes


def json_accepted(accept: str) -> None:
    """QIDO-RS and metadata answer DICOM JSON: the Accept must allow it."""
    if not accept.strip():
        return
    for media, _ in _media_ranges(accept):
        if media in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise NotAcceptable(f"This resource is served as {DICOM_JSON} only.")


# -- what a request names -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    level: str  # STUDY, SERIES or IMAGE
    study: str
    series: str | None = None
    instance: str | None = None

    def query(self) -> q.Query:
        """The retrieve's unique keys; a URL segment that is not one UID (a list, a pattern) is refused."""
        keys = [("StudyInstanceUID", self.study)]
        if self.series is not None:
            keys.append(("SeriesInstanceUID", self.series))
        if self.instance is not None:
            keys.append(("SOPInstanceUID", self.instance))
        for keyword, uid in keys:
            if len(uid) > 64 or not UID_PATTERN.fullmatch(uid):
                raise q.QueryError(f"the URL's {keyword} is not a valid UID")
        return q.query_make(level=self.level, keys=keys)

    def noun(self) -> str:
        return {q.STUDY: "study", q.SERIES: "series", q.IMAGE: "instance"}[self.level]


@dataclass(frozen=True)
class Held:
    instances: list[Instance]  # held, in study, series and instance order
    purged: int  # named by the request, their files purged: not sent


def instances_held(target: Target) -> Held:
    """The held instances a WADO-RS request names, found as C-MOVE finds them (purged ones too, to say so).
    None at all, or none held: NotFound, saying which."""
    instances = retrieve_instances(target.query())
    if not instances:
        raise NotFound(f"No such {target.noun()}.")
    held = [i for i in instances if i.file_state == FileState.STORED]
    if not held:
        raise NotFound(f"The files of this {target.noun()} were purged: the router no longer holds it.")
    return Held(instances=held, purged=len(instances) - len(held))


def reads_audit(held: Held, *, target: Target, caller: str, source: str, action: str) -> None:
    """One audit event per study read (who, from where, how many instances; no patient data), and a log line."""
    left_out = f", {held.purged} purged and not sent" if held.purged else ""
    for study in {i.study_id: i.study for i in held.instances}.values():
        count = sum(1 for i in held.instances if i.study_id == study.pk)
        AuditEvent.objects.create(
            username=caller[:150],
            action=f"dicomweb.{action}",
            study=study,
            study_instance_uid=study.study_instance_uid,
            source_address=source or None,
            detail=f"{target.level} level, {count} instances{left_out}",
        )
    logger.info(
        "dicomweb %s by %s: %s level, study %s, %d instances%s",
        action,
        caller,
        target.level,
        held.instances[0].study_id,
        len(held.instances),
        left_out,
    )


def syntaxes_check(instances: list[Instance], accepted: set[str] | None) -> None:
    if accepted is ANY:
        return
    stored = sorted({i.transfer_syntax_uid for i in instances} - accepted)
    if stored:
        raise NotAcceptable(
            f"Stored as {', '.join(stored)}; the router does not transcode: ask for transfer-syntax=* or the "
            "stored syntax."
        )


# -- bodies -------------------------------------------------------------------------------------------


def boundary_make() -> str:
    return f"wado-{uuid.uuid4().hex}"


def multipart_files(instances: list[Instance], boundary: str) -> Iterator[bytes]:
    """The stored files as parts of a multipart/related body, read CHUNK bytes at a time. A file removed
    since the request began (a purge in between) is left out and logged: the status line is already sent."""
    paths = [(i.pk, Path(settings.STORAGE_ROOT) / i.path, i.transfer_syntax_uid) for i in instances]
    for pk, path, syntax in paths:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the `with` below; opening alone may fail
        except FileNotFoundError:
            logger.warning("dicomweb retrieve: instance %s left out: its file was removed during the response", pk)
            continue
        with fh:
            yield f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={syntax}\r\n\r\n".encode()
            while chunk := fh.read(CHUNK):
                yield chunk
            yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def metadata_json(instances: list[Instance]) -> Iterator[bytes]:
    """A JSON array of each instance's header (PS3.18 F.2) read up to its pixel data, which is left out; other
    binary values are inline (InlineBinary). One header in memory at a time."""
    paths = [(i.pk, Path(settings.STORAGE_ROOT) / i.path) for i in instances]
    yield b"["
    first = True
    for pk, path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except FileNotFoundError:
            logger.warning("dicomweb metadata: instance %s left out: its file was removed during the response", pk)
            continue
        item = json.dumps(ds.to_json_dict(suppress_invalid_tags=True), ensure_ascii=False).encode()
        yield item if first else b"," + item
        first = False
    yield b"]"
