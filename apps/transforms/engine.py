"""The transform engine: one instance, one profile, one secret -> the bytes a destination receives.

1. Read the dataset up to Pixel Data (`stop_before_pixels`); pixels are never read into memory or decoded.
2. Refuse what must not go: burned-in pixels, a patient missing from the pseudonym table (Held).
3. De-identify (Annex E with options), then apply the operations in order.
4. Write the Part 10 file: preamble, file meta (Media Storage SOP Instance UID follows the SOP Instance
   UID; the transfer syntax is kept), the new header in the file's own encoding (elements no step changed
   copied as their source bytes, splice.py), then Pixel Data and what follows it copied byte for byte from
   the source (private blocks and digital signatures after Pixel Data are left out when the profile removes
   them).

Nothing depends on the clock, the process or a random source, so a retry or another worker writes the same
bytes; the SHA-256 returned is what the ledger records.
"""

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from . import annex_e, paths, splice
from .coerce import apply_operations, creator_name
from .deidentify import check_burned_in, deidentify, pseudonym_for
from .profile import OPS, OPTIONS, REMOVE_PRIVATE, Held, Operation, Profile, validate
from .pseudonyms import (
    MIN_SECRET_BYTES,
    SecretNeeded,
    date_offset_days,
    keyed_hash,
    patient_pseudonym,
    uid_pseudonym,
)

# The Annex E edition the Basic Profile table comes from, for the integrator's documentation and checks.
ANNEX_E_EDITION = annex_e.EDITION

__all__ = [
    "ANNEX_E_EDITION",
    "MIN_SECRET_BYTES",
    "OPS",
    "OPTIONS",
    "Change",
    "Held",
    "Operation",
    "Profile",
    "SecretNeeded",
    "Transformed",
    "date_offset_days",
    "keyed_hash",
    "patient_pseudonym",
    "preview",
    "transform",
    "uid_pseudonym",
    "validate",
]

COPY_CHUNK = 1 << 20
SHOWN_CHARACTERS = 256  # a change shows at most this much of a value
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float and Pixel Data
# File meta attributes that name the machines an instance passed through (PS3.10 7.1).
META_AE_AND_ADDRESSES = tuple(
    Tag(0x0002, element) for element in (0x0016, 0x0017, 0x0018, 0x0026, 0x0027, 0x0028, 0x0100, 0x0102)
)
META_FOLLOWS = (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID"))


@dataclass(frozen=True)
class Change:
    """One attribute changed. `tag` is a path like `(0040,0275)[0].(0008,0050)`, `keyword` the same path with
    keywords. `before` is None when the attribute was added, `after` None when it was removed."""

    tag: str
    keyword: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class Transformed:
    sha256: str
    size: int
    changes: list[Change] | None  # None unless asked for: a delivery needs the digest only
    # The copy's own SOP Instance UID (a de-identified copy's is a pseudonym): what the receiver knows it by,
    # and what a storage commitment request names.
    sop_instance_uid: str = ""


def transform(source: Path, target: Path, profile: Profile, secret: bytes, *, changes: bool = False) -> Transformed:
    """Write the transformed instance to `target` (atomically: a temporary file beside it, then a rename).
    Raises Held when the instance must not go to this destination, ValueError for an invalid profile.
    With `changes`, the result lists them as `preview` does (it costs as much as the rest of the transform)."""
    with open(source, "rb") as fh:
        header = _Header.read(fh)
        made = header.transform(profile, secret, changes=changes)
        encoded = header.encode()
        tail = _tail(fh, header, profile)
        digest = hashlib.sha256()
        target = Path(target)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".transform-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                size = _write(out, digest, encoded)
                for start, end in tail:
                    size += _copy(fh, out, digest, start, end)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    uid = str(header.dataset.get("SOPInstanceUID", "") or "")
    return Transformed(sha256=digest.hexdigest(), size=size, changes=made, sop_instance_uid=uid)


def preview(source: Path, profile: Profile, secret: bytes) -> list[Change]:
    """The changes `transform` would make; nothing is written. Raises Held as `transform` would."""
    with open(source, "rb") as fh:
        return _Header.read(fh).transform(profile, secret, changes=True)


class _Header:
    """The dataset before Pixel Data, its file meta, and where the rest of the file starts."""

    def __init__(self, dataset: Dataset, tail_start: int, source: splice.Source | None) -> None:
        self.dataset = dataset
        self.tail_start = tail_start
        self.source = source  # where each element read lies in the file: unchanged ones are copied from there

    @classmethod
    def read(cls, fh) -> "_Header":
        dataset, source = splice.read(fh)
        if dataset.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # The whole dataset is one deflate stream: there are no Pixel Data bytes to copy as they are.
            raise Held("the Deflated Explicit VR Little Endian transfer syntax cannot be transformed")
        return cls(dataset, fh.tell(), source)

    def transform(self, profile: Profile, secret: bytes, *, changes: bool) -> list[Change] | None:
        errors = validate(profile)
        if errors:
            raise ValueError(f"invalid transform profile {profile.name!r}: " + "; ".join(errors))
        dataset = self.dataset
        patient_id = str(dataset.get("PatientID", "") or "").strip()
        if changes:
            before = _snapshot(dataset)
            meta_before = _flatten(dataset.file_meta)
        if profile.deidentify:
            if not profile.allow_burned_in:
                check_burned_in(dataset, self.sop_class_uid)
            pseudonym = pseudonym_for(patient_id, profile.pseudonyms, secret)
            deidentify(dataset, options=profile.options, secret=secret, pseudonym=pseudonym)
            dataset.preamble = None  # a preamble may hold a TIFF header with the patient's details
            for tag in META_AE_AND_ADDRESSES:
                if tag in dataset.file_meta:
                    del dataset.file_meta[tag]
        apply_operations(dataset, profile.operations, secret=secret, patient_id=patient_id)
        _drop_group_lengths(dataset)
        self._update_meta()
        if not changes:
            return None
        return _changes(meta_before, _flatten(dataset.file_meta)) + _diff(before, dataset)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.get("SOPClassUID") or self.dataset.file_meta.get("MediaStorageSOPClassUID") or "")

    def _update_meta(self) -> None:
        """The file meta's SOP Class and Instance UIDs follow the dataset's. Both still as read, with the same
        bytes: nothing to do (decoding and setting them again cost as much as a whole coercion)."""
        dataset, meta = self.dataset, self.dataset.file_meta
        for keyword, meta_keyword in META_FOLLOWS:
            tag, meta_tag = Tag(keyword), Tag(meta_keyword)
            if tag in dataset and not self._read_alike(tag, meta_tag):
                setattr(meta, meta_keyword, getattr(dataset, keyword))

    def _read_alike(self, tag: Tag, meta_tag: Tag) -> bool:
        ours, theirs = self.dataset.get_item(tag, keep_deferred=True), self.dataset.file_meta.get_item(meta_tag)
        source = self.source
        return (
            source is not None
            and source.read_as(tag, ours)
            and source.read_as(meta_tag, theirs, meta=True)
            and ours.value == theirs.value
        )

    def encode(self) -> bytes:
        """Preamble, file meta and header, in the file's own transfer syntax: spliced from the source when
        splice.py can vouch for the result, else written by pydicom."""
        encoded = splice.part10(self.dataset, self.source)
        return self.dcmwrite() if encoded is None else encoded

    def dcmwrite(self) -> bytes:
        buffer = io.BytesIO()
        dcmwrite(buffer, self.dataset, enforce_file_format=True)
        return buffer.getvalue()


def _tail(fh, header: _Header, profile: Profile) -> list[tuple[int, int]]:
    """Byte ranges of the file from Pixel Data on that go out unchanged. The elements are walked, not read:
    large values are skipped over (deferred), so a multi-gigabyte Pixel Data costs a seek."""
    fh.seek(header.tail_start)
    implicit, little = header.dataset.original_encoding
    keep_creators = _kept_creators(profile)
    ranges: list[tuple[int, int]] = []
    creators: dict[tuple[int, int], str] = {}
    start = header.tail_start
    for element in data_element_generator(fh, implicit, little, defer_size=1024):
        end = fh.tell()
        tag = Tag(element.tag)
        if tag.is_private and 0x0010 <= tag.element <= 0x00FF and element.value is not None:
            creators[(tag.group, tag.element)] = creator_name(element.value)
        if _tail_keeps(tag, profile, keep_creators, creators):
            if ranges and ranges[-1][1] == start:  # one copy for elements that follow each other
                start = ranges.pop()[0]
            ranges.append((start, end))
        start = end
    return ranges


def _kept_creators(profile: Profile) -> frozenset[str] | None:
    """Creators whose private blocks survive the profile; None when private attributes are not removed."""
    if profile.deidentify:
        return frozenset()
    kept = None
    for operation in profile.operations:
        if operation.op == REMOVE_PRIVATE:
            creators = frozenset(operation.keep_creators)
            kept = creators if kept is None else kept & creators
    return kept


def _tail_keeps(tag: Tag, profile: Profile, keep_creators, creators: dict[tuple[int, int], str]) -> bool:
    if tag in PIXEL_TAGS:
        return True
    if profile.deidentify:
        return False  # trailing padding, digital signatures and private data: X in the Basic Profile
    if not tag.is_private or keep_creators is None:
        return True
    block = tag.element if tag.element <= 0x00FF else tag.element >> 8
    return creators.get((tag.group, block)) in keep_creators


def _write(out, digest, data: bytes) -> int:
    out.write(data)
    digest.update(data)
    return len(data)


def _copy(fh, out, digest, start: int, end: int) -> int:
    fh.seek(start)
    remaining = end - start
    while remaining:
        chunk = fh.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise ValueError("the source file ended inside an element")
        _write(out, digest, chunk)
        remaining -= len(chunk)
    return end - start


def _drop_group_lengths(dataset: Dataset) -> None:
    """Group lengths (gggg,0000) are retired and would be wrong once a value changes."""
    tags = list(dataset.keys())
    for tag in tags:
        if tag.element == 0 and tag.group != 0x0002:
            del dataset[tag]


def _snapshot(dataset: Dataset) -> dict[int, object]:
    """The dataset's elements before the transform: raw elements as they are (immutable, and still the same
    object afterwards when nothing touched them), decoded ones (sequences) already flattened for display."""
    snapshot: dict[int, object] = {}
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag, keep_deferred=True)
        snapshot[tag] = element if isinstance(element, RawDataElement) else _flatten_element(dataset, element, "", "")
    return snapshot


def _diff(snapshot: dict[int, object], dataset: Dataset) -> list[Change]:
    """The changes, in tag order, decoding only the elements that were touched."""
    changes = []
    for tag in sorted(snapshot.keys() | dataset.keys()):
        old = snapshot.get(tag)
        new = dataset.get_item(tag, keep_deferred=True) if tag in dataset else None
        if isinstance(old, RawDataElement) and new is old:
            continue
        before = old if isinstance(old, dict) else _flatten_element(dataset, old, "", "")
        after = _flatten_element(dataset, new, "", "")
        changes += _changes(before, after)
    return changes


def _flatten(dataset: Dataset, prefix: tuple[str, str] = ("", "")) -> dict[str, tuple[str, str]]:
    """path -> (keyword path, shown value) for every attribute, items of sequences included."""
    flat: dict[str, tuple[str, str]] = {}
    for tag in list(dataset.keys()):
        flat.update(_flatten_element(dataset, dataset.get_item(tag, keep_deferred=True), *prefix))
    return flat


def _flatten_element(dataset: Dataset, element, path_prefix: str, word_prefix: str) -> dict[str, tuple[str, str]]:
    if element is None:
        return {}
    if isinstance(element, RawDataElement):
        element = convert_raw_data_element(element, encoding=dataset._character_set, ds=dataset)
    if element.tag.element == 0 and element.tag.group != 0x0002:
        return {}  # group lengths: dropped by the engine, not a change anybody made
    tag, keyword = paths.describe(element.tag)
    path, words = path_prefix + tag, word_prefix + (keyword or tag)
    if element.VR != "SQ":
        return {path: (words, _shown(element))}
    items = element.value or Sequence()
    flat = {path: (words, f"{len(items)} item(s)")}
    for number, item in enumerate(items):
        flat.update(_flatten(item, (f"{path}[{number}].", f"{words}[{number}].")))
    return flat


def _shown(element: DataElement) -> str:
    value = element.value
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:12]}>"
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(v) for v in value)
    shown = str(value)
    return shown if len(shown) <= SHOWN_CHARACTERS else shown[:SHOWN_CHARACTERS] + "…"


def _changes(before: dict[str, tuple[str, str]], after: dict[str, tuple[str, str]]) -> list[Change]:
    """What differs, in tag order; inside a sequence that was added or removed whole, only the sequence."""
    changes = []
    for path in sorted(before.keys() | after.keys(), key=_path_order):
        old, new = before.get(path), after.get(path)
        if old == new or _under_whole_change(path, before, after):
            continue
        words = (new or old)[0]
        changes.append(Change(path, words, old and old[1], new and new[1]))
    return changes


def _under_whole_change(path: str, before: dict, after: dict) -> bool:
    parts = path.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth]).rsplit("[", 1)[0]
        if (parent in before) != (parent in after):
            return True
    return False


def _path_order(path: str) -> tuple:
    """(group, element, item number) per step, so item 10 sorts after item 2."""
    return tuple((int(part[1:5], 16), int(part[6:10], 16), int(part[12:-1] or -1)) for part in path.split("."))
