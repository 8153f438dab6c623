"""What a delivery sends: the stored files byte for byte, or, through the delivery's transform profile, copies
made for this attempt (apps/transforms/engine.py). The stored original never changes.

The engine is deterministic (same file, profile and secret: same bytes), so a copy is made again at each
attempt rather than kept: a retry sends what the first attempt sent, a profile mended in between sends the
mended bytes, and nothing is left on disk after the attempt. An instance the profile refuses (burned-in
pixels, a patient missing from the pseudonym table, a secret that cannot be read) is held for this
destination with the reason; the other instances and the other destinations go on.
"""

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

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


def profile_for(delivery: Delivery) -> TransformProfile | None:
    """The profile the receiving destination gets this delivery through. The one chosen at routing, unless
    the destination receiving it now has its own that routing did not know: a profile added to the
    destination since, or an alternate's. Never the original bytes to a destination that has a profile."""
    target = delivery.target or delivery.destination
    if target.pk != delivery.destination_id:  # an alternate: its own profile first, else the rule's choice
        return target.transform or delivery.transform
    return delivery.transform or target.transform


def prepare(delivery: Delivery, items: list[DeliveryItem]) -> Prepared:
    """The file to send for each pending item (its instance preloaded), or why it is held. An item whose copy
    could not be written (a full disk) is neither: it stays pending and goes at the next attempt."""
    return prepare_for(profile_for(delivery), items, instance=lambda item: item.instance, label=str(delivery.pk))


def prepare_for(profile: TransformProfile | None, things: list, *, instance, label: str) -> Prepared:
    """As `prepare`, for anything that names an instance (`instance(thing)`, preloaded): a delivery's items,
    or the instances a C-MOVE sends. `prepared.sendable` holds the things sent, `held` their pk's."""
    prepared = Prepared()
    if profile is None:
        for thing in things:
            _add(prepared, thing, instance(thing), settings.STORAGE_ROOT / instance(thing).path, instance(thing).sha256)
        return prepared
    try:
        secret = profile.secret_bytes()
    except SecretUnavailable as exc:
        prepared.held = {thing.pk: str(exc) for thing in things}
        return prepared
    transform = profile.engine_profile(_pseudonym_table(profile))
    # A folder of this attempt's own: a second worker given the same delivery after a lease never shares it.
    root = settings.STORAGE_ROOT / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    prepared.folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
    for thing in things:
        stored = instance(thing)
        target = prepared.folder / f"{stored.pk}.dcm"
        try:
            made = engine.transform(settings.STORAGE_ROOT / stored.path, target, transform, secret)
        except engine.Held as held:
            prepared.held[thing.pk] = f"held by profile {profile.name}: {held.reason}"
            continue
        except engine.SecretNeeded:
            need = f"at least {engine.MIN_SECRET_BYTES} bytes, env:VARIABLE or file:/path"
            prepared.held[thing.pk] = f"profile {profile.name} needs a secret ({need})"
            continue
        except OSError as exc:  # our disk, not the data: the item stays pending and goes again
            logger.error("deliver: transformed copy of instance %s not written: %s", stored.pk, exc.strerror)
            continue
        except Exception as exc:  # noqa: BLE001 - a file the engine cannot rewrite: held, never a crashed delivery
            # The message could quote a value of the file: its type only.
            logger.error("deliver: profile %s failed on instance %s: %s", profile.name, stored.pk, type(exc).__name__)
            prepared.held[thing.pk] = f"profile {profile.name} could not rewrite this file ({type(exc).__name__})"
            continue
        other_uid = made.sop_instance_uid if made.sop_instance_uid != stored.sop_instance_uid else ""
        _add(prepared, thing, stored, target, made.sha256, other_uid)
    return prepared


def _add(prepared: Prepared, thing, instance, path: Path, sha256: str, sent_uid: str = "") -> None:
    prepared.sendable.append(thing)
    prepared.files.append(dicom_send.File(instance.sop_class_uid, instance.transfer_syntax_uid, path))
    prepared.sha256.append(sha256)
    prepared.sent_uids.append(sent_uid)


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
    if prepared.folder is not None:
        shutil.rmtree(prepared.folder, ignore_errors=True)
