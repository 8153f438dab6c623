"""Transform profiles at work outside delivery: a preview on a stored instance, a pseudonym table's import."""

import csv
import io
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from apps.studies.models import FileState, Instance

from . import engine
from .models import PseudonymEntry, SecretUnavailable, TransformProfile


@dataclass
class Preview:
    changes: list[engine.Change] = field(default_factory=list)
    held: str = ""  # why a destination with this profile would not receive the instance
    error: str = ""  # why there is nothing to show


def profile_preview(*, profile: TransformProfile, sop_instance_uid: str) -> Preview:
    """Every attribute the profile changes in a stored instance, before and after; nothing is written."""
    instance = Instance.objects.filter(sop_instance_uid=sop_instance_uid.strip()).first()
    if instance is None:
        return Preview(error="No stored instance has this SOP Instance UID.")
    if instance.file_state != FileState.STORED:
        return Preview(error=f"This instance's file was purged ({instance.purge_reason}).")
    try:
        secret = profile.secret_bytes()
    except SecretUnavailable as exc:
        return Preview(held=str(exc))
    table = dict(profile.pseudonyms.values_list("patient_id", "pseudonym")) if profile.use_pseudonym_table else None
    try:
        changes = engine.preview(settings.STORAGE_ROOT / instance.path, profile.engine_profile(table), secret)
    except engine.Held as held:
        return Preview(held=held.reason)
    except ValueError as exc:
        return Preview(error=f"The profile cannot be applied: {exc}")
    return Preview(changes=changes)


def pseudonyms_import(*, profile: TransformProfile, text: str, replace: bool = False) -> tuple[int, int]:
    """Rows `patient_id,pseudonym` (a header row naming them is skipped) into the profile's table: (created,
    updated). With `replace`, rows absent from the file are removed. Raises ValueError naming the bad line."""
    rows: dict[str, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (number == 1 and [c.strip().lower() for c in row] == ["patient_id", "pseudonym"]):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"line {number}: expected patient_id,pseudonym")
        patient_id, pseudonym = row[0].strip(), row[1].strip()
        if len(patient_id) > 64 or len(pseudonym) > 64:
            raise ValueError(f"line {number}: a patient ID and a pseudonym are at most 64 characters")
        rows[patient_id] = pseudonym
    taken = [p for p, n in Counter(rows.values()).items() if n > 1]
    if taken:
        raise ValueError(f"{len(taken)} pseudonym(s) given to more than one patient")
    with transaction.atomic():
        current = dict(profile.pseudonyms.values_list("patient_id", "pseudonym"))
        new = [PseudonymEntry(profile=profile, patient_id=p, pseudonym=s) for p, s in rows.items() if p not in current]
        changed = [p for p, s in rows.items() if p in current and current[p] != s]
        PseudonymEntry.objects.bulk_create(new)
        for patient_id in changed:
            profile.pseudonyms.filter(patient_id=patient_id).update(pseudonym=rows[patient_id])
        if replace:
            profile.pseudonyms.exclude(patient_id__in=list(rows)).delete()
    return len(new), len(changed)
