"""What a delivery sends: the stored files byte for byte, or, through the delivery's transform profile, copies
made for this attempt (apps/transforms/engine.py). The stored original never changes.

The engine is deterministic (same file, profile and secret: same bytes), so a copy is made again at each
attempt rather than kept: a retry sends what the first attempt sent, a profile mended in between sends the
mended bytes, and nothing is left on disk after the attempt. An instance the profile refuses (burned-in
pixels, a patient missing from the pseudonym table, a secret that cannot be read) is held for this
destination with the reason; the other instances and the other destinations go on.
"""

import dataclasses
import functools
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from apps.transforms import ahead as transform_ahead
from apps.transforms import engine
from apps.transforms.models import SecretUnavailable, TransformProfile

from . import dicom_send
from .models import Delivery, DeliveryItem

logger = logging.getLogger(__name__)

FOLDER = "transformed"  # under STORAGE_ROOT: same file system as the originals, never in the spool


@dataclass
class Prepared:
    sendable: list[DeliveryItem] = field(default_factory=list)
    files: list[dicom_send.File] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)  # of each file sent, in order
    # The SOP Instance UID each file carries where a transform gave it another (else empty), in order.
    sent_uids: list[str] = field(default_factory=list)
    held: dict[int, str] = field(default_factory=dict)  # item id -> reason
    folder: Path | None = None
    # Made ahead of the sender: each file waits for its copy (`File.ready`); `finish` then drops those
    # that were not made (held, or not written) from the lists and from the results.
    maker: "_Maker | None" = None

    def finish(self, results: list[dicom_send.Result] | None = None) -> list[dicom_send.Result]:
        """Every file's outcome known, and the lists (and `results`, one per file) kept to those made."""
        results = list(results or [])
        if self.maker is None:
            return results
        maker, self.maker = self.maker, None
        maker.finish()
        kept = [i for i in range(len(self.files)) if maker.made[i]]
        self.sendable = [self.sendable[i] for i in kept]
        self.files = [dataclasses.replace(self.files[i], ready=None) for i in kept]
        self.sha256 = [self.sha256[i] for i in kept]
        self.sent_uids = [self.sent_uids[i] for i in kept]
        return [results[i] for i in kept] if results else results


@dataclass(frozen=True)
class Source:
    """One stored instance to transform: the thing it stands for (an item, an instance) and its row."""

    thing: object
    pk: int
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str


def profile_for(delivery: Delivery) -> TransformProfile | None:
    """The profile the receiving destination gets this delivery through. The one chosen at routing, unless
    the destination receiving it now has its own that routing did not know: a profile added to the
    destination since, or an alternate's. Never the original bytes to a destination that has a profile."""
    target = delivery.target or delivery.destination
    if target.pk != delivery.destination_id:  # an alternate: its own profile first, else the rule's choice
        return target.transform or delivery.transform
    return delivery.transform or target.transform


def prepare(delivery: Delivery, items: list[DeliveryItem], *, ahead: bool = False) -> Prepared:
    """The file to send for each pending item (its instance preloaded), or why it is held. An item whose copy
    could not be written (a full disk) is neither: it stays pending and goes at the next attempt.
    With `ahead`, copies are made in a helper process while the sender sends (apps/transforms/ahead.py): the
    caller sends `prepared.files`, whose copies it waits for one by one, then calls `prepared.finish`."""
    profile = profile_for(delivery)
    return prepare_for(profile, items, instance=lambda item: item.instance, label=str(delivery.pk), ahead=ahead)


def prepare_for(
    profile: TransformProfile | None, things: list, *, instance, label: str, ahead: bool = False
) -> Prepared:
    """As `prepare`, for anything that names an instance (`instance(thing)`, preloaded): a delivery's items,
    or the instances a C-MOVE sends. `prepared.sendable` holds the things sent, `held` their pk's."""
    sources = [
        Source(thing, i.pk, settings.STORAGE_ROOT / i.path, i.sop_class_uid, i.transfer_syntax_uid, i.sop_instance_uid)
        for thing, i in ((thing, instance(thing)) for thing in things)
    ]
    if profile is None:
        prepared = Prepared()
        for source, thing in zip(sources, things, strict=True):
            _add(prepared, source, source.path, instance(thing).sha256)
        return prepared
    try:
        secret = profile.secret_bytes()
    except SecretUnavailable as exc:
        return Prepared(held={source.thing.pk: str(exc) for source in sources})
    transform = profile.engine_profile(_pseudonym_table(profile))
    return prepare_files(transform, secret, sources, label=label, ahead=ahead)


def prepare_files(
    transform: engine.Profile, secret: bytes, sources: list[Source], *, label: str, ahead: bool = False
) -> Prepared:
    """The copies of `sources` through `transform`, in a folder of this attempt's own under STORAGE_ROOT (a
    second worker given the same delivery after a lease never shares it). Made here before this returns, or
    with `ahead` by the helper process while the caller sends (then `finish` after the send)."""
    root = settings.STORAGE_ROOT / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    prepared = Prepared(folder=Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root)))
    targets = [prepared.folder / f"{source.pk}.dcm" for source in sources]
    maker = _Maker(prepared, sources, targets, transform, secret, ahead=ahead)
    for index, (source, target) in enumerate(zip(sources, targets, strict=True)):
        _add(prepared, source, target, "", ready=functools.partial(maker.ready, index))
    prepared.maker = maker
    if not ahead:
        prepared.finish()
    return prepared


class _Maker:
    """Makes the copies, in order, and records each outcome in the Prepared as it becomes known."""

    def __init__(self, prepared: Prepared, sources, targets, transform, secret: bytes, *, ahead: bool) -> None:
        self.prepared = prepared
        self.sources = sources
        self.name = transform.name
        self.made: list[bool | None] = [None] * len(sources)  # None: not known yet
        pairs = list(zip((s.path for s in sources), targets, strict=True))
        self.job = transform_ahead.start(pairs, transform, secret) if ahead else None
        self.pairs, self.transform, self.secret = pairs, transform, secret
        self.known = 0

    def ready(self, index: int) -> bool:
        """Wait until files[index] is made; False when it will not be (held, or not written)."""
        while self.known <= index:
            self._next()
        return bool(self.made[index])

    def finish(self) -> None:
        while self.known < len(self.sources):
            self._next()

    def _next(self) -> None:
        index = self.known
        if self.job is not None:
            answer = self.job.next()
        else:
            answer = transform_ahead.outcome(*self.pairs[index], self.transform, self.secret)
        self.known += 1
        self.made[index] = self._record(index, answer)

    def _record(self, index: int, answer: tuple) -> bool:
        source = self.sources[index]
        kind = answer[0]
        if kind == "made":
            sha256, uid = answer[1], answer[2]
            self.prepared.sha256[index] = sha256
            self.prepared.sent_uids[index] = uid if uid != source.sop_instance_uid else ""
            return True
        if kind == "held":
            self.prepared.held[source.thing.pk] = f"held by profile {self.name}: {answer[1]}"
        elif kind == "secret":
            need = f"at least {engine.MIN_SECRET_BYTES} bytes, env:VARIABLE or file:/path"
            self.prepared.held[source.thing.pk] = f"profile {self.name} needs a secret ({need})"
        elif kind == "oserror":  # our disk, not the data: the item stays pending and goes again
            logger.error("deliver: transformed copy of instance %s not written: %s", source.pk, answer[1])
        else:  # a file the engine cannot rewrite: held, never a crashed delivery (its type only: no value)
            logger.error("deliver: profile %s failed on instance %s: %s", self.name, source.pk, answer[1])
            self.prepared.held[source.thing.pk] = f"profile {self.name} could not rewrite this file ({answer[1]})"
        return False


def _add(prepared: Prepared, source: Source, path: Path, sha256: str, ready=None) -> None:
    prepared.sendable.append(source.thing)
    prepared.files.append(dicom_send.File(source.sop_class_uid, source.transfer_syntax_uid, path, ready))
    prepared.sha256.append(sha256)
    prepared.sent_uids.append("")


def _pseudonym_table(profile: TransformProfile) -> dict[str, str] | None:
    if not profile.use_pseudonym_table:
        return None
    return dict(profile.pseudonyms.values_list("patient_id", "pseudonym"))


def hold(prepared: Prepared) -> None:
    """Record the held items (still pending: a duplicate attempt may have sent them meanwhile, never)."""
    for item_id, reason in prepared.held.items():
        DeliveryItem.objects.filter(pk=item_id, state=DeliveryItem.State.PENDING).update(
            state=DeliveryItem.State.HELD, error=reason[:2000]
        )
        logger.warning("deliver: item %s held: %s", item_id, reason)


def clean(prepared: Prepared) -> None:
    """Remove this attempt's copies (after `finish`: the helper may still be writing them until then)."""
    prepared.finish()
    if prepared.folder is not None:
        shutil.rmtree(prepared.folder, ignore_errors=True)
