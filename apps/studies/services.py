"""Writes on studies: register, persist, classify, check. Each is idempotent and guarded by the stage."""

import contextlib
import filecmp
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Prefetch, Sum
from pydicom.errors import InvalidDicomError

from apps.core import clock

from . import classify as classify_rules
from . import pixels, qc
from .headers import PRIORITY_ATTRIBUTES, read_header, whole_seconds
from .models import (
    FileState,
    Instance,
    PriorityKeyword,
    QcCheck,
    QualityAssessment,
    ReceivedInstance,
    Series,
    SpecialtyMapping,
    Stage,
    Study,
    WorkloadWeight,
)

logger = logging.getLogger(__name__)


def received_instance_register(
    *,
    sop_instance_uid: str,
    sop_class_uid: str,
    study_instance_uid: str,
    transfer_syntax_uid: str,
    path: str,
    size: int,
    calling_ae_title: str,
    called_ae_title: str,
    peer_address: str,
) -> bool:
    """Record custody of a stored file. False when the SOP Instance UID was already received.

    Raises DatabaseError when the database cannot commit: the caller answers 0xA700.
    """
    # The SCP runs in autocommit: the INSERT commits by itself, one round trip instead of three (BEGIN,
    # INSERT, COMMIT). Inside a caller's transaction a savepoint keeps a duplicate's error from breaking it.
    scope = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with scope:
            ReceivedInstance.objects.create(
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                study_instance_uid=study_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                path=path,
                size=size,
                calling_ae_title=calling_ae_title,
                called_ae_title=called_ae_title,
                peer_address=peer_address,
                received_at=clock.now(),
            )
    except IntegrityError:
        if ReceivedInstance.objects.filter(sop_instance_uid=sop_instance_uid).exists():
            return False
        raise
    return True


def received_instance_second_copy(*, sop_instance_uid: str, path: str) -> bool:
    """A later copy (stored at `path`, relative) of an instance already received. Returns True when the
    new copy takes the kept row's place: the kept file is missing, as after a commit whose answer was lost
    (the SCP answered 0xA700 and removed its file, the row stayed). Otherwise a difference in content is
    counted on the kept row for QC, and the caller removes the new copy."""
    kept = ReceivedInstance.objects.filter(sop_instance_uid=sop_instance_uid).first()
    if kept is None:
        return False
    if not (settings.STORAGE_ROOT / kept.path).exists():
        ReceivedInstance.objects.filter(pk=kept.pk).update(path=path)
        # A purged instance received again has its file back (and is purged again once its retention passed).
        Instance.objects.filter(received=kept).update(
            path=path, file_state=FileState.STORED, purged_at=None, purge_reason=""
        )
        logger.warning("received instance %s: its file was missing; the new copy takes its place", kept.pk)
        return True
    _count_if_different(kept, settings.STORAGE_ROOT / path)
    return False


def instances_purge_mark(*, instance_ids: Iterable[int], reason: str, now: datetime) -> int:
    """The first half of removing files: mark stored instances PURGING (the caller holds the study's lock
    and has checked that nothing more is to be done with them). Returns how many were marked."""
    return Instance.objects.filter(pk__in=list(instance_ids), file_state=FileState.STORED).update(
        file_state=FileState.PURGING, purged_at=now, purge_reason=reason
    )


@dataclass
class Removed:
    files: int = 0
    bytes_by_reason: dict[str, int] = field(default_factory=dict)


def instance_files_remove(*, instance_ids: Iterable[int] | None = None) -> Removed:
    """The second half: remove the files of PURGING instances (all of them when no ids are given, as after
    a purge that died half way), and mark each PURGED. Returns what this call removed: a file another purge
    finished at the same time is counted by whichever marked it PURGED.

    A row is marked before its file goes and the file goes before the row says PURGED, so a purge killed at
    any point leaves no row naming a missing file unmarked; whoever runs next finishes it."""
    rows = Instance.objects.filter(file_state=FileState.PURGING)
    if instance_ids is not None:
        rows = rows.filter(pk__in=list(instance_ids))
    removed = Removed()
    for pk, path, size, reason in rows.values_list("pk", "path", "size", "purge_reason").iterator():
        (settings.STORAGE_ROOT / path).unlink(missing_ok=True)
        if Instance.objects.filter(pk=pk, file_state=FileState.PURGING).update(file_state=FileState.PURGED):
            removed.files += 1
            removed.bytes_by_reason[reason] = removed.bytes_by_reason.get(reason, 0) + size
    return removed


def _count_if_different(kept: ReceivedInstance, path: Path) -> bool:
    try:
        same = filecmp.cmp(settings.STORAGE_ROOT / kept.path, path, shallow=False)  # in blocks, not whole files
    except OSError:
        return False
    if not same:
        ReceivedInstance.objects.filter(pk=kept.pk).update(conflicting_copies=F("conflicting_copies") + 1)
        logger.warning("received instance %s: received again with different content; first copy kept", kept.pk)
    return not same


def priority_hint(urgency: Iterable[tuple[str, str]]) -> str:
    """The priority a study's received instances suggest, before classification: the same rules, read from
    the (keyword, value) pairs the SCP kept (priority attributes and descriptions)."""
    pairs = sorted(set(urgency))
    attributes = {f"{k} {i}": v for i, (k, v) in enumerate(pairs) if k in PRIORITY_ATTRIBUTES}
    descriptions = [v for k, v in pairs if k not in PRIORITY_ATTRIBUTES]
    priority, _ = classify_rules.priority_from(
        attributes=attributes,
        descriptions=descriptions,
        keywords=list(PriorityKeyword.objects.values_list("keyword", "priority")),
    )
    return priority


def study_register(*, study_instance_uid: str) -> Study:
    now = clock.now()
    study, _ = Study.objects.get_or_create(
        study_instance_uid=study_instance_uid, defaults={"received_at": now, "stage_changed_at": now}
    )
    return study


def study_persist(*, study_id: int, now: datetime | None = None) -> int:
    """Turn the study's received instances into Series and Instance rows.

    1. Read each received file's header outside any transaction.
    2. Claim the received row (received -> persisted) and write Series and Instance in one transaction.
    3. Quarantine what cannot be read, with its reason; the rest goes on.
    4. Refresh the study's header fields and counts; new content sets the stage back to PERSISTED.
       A new study none of whose instances could be persisted (every one quarantined) is REJECTED with
       the reason: there is nothing to route or to read. A later good instance sets it back as any does.
    """
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        logger.warning("persist: study %s does not exist", study_id)
        return 0
    pending = ReceivedInstance.objects.filter(
        study_instance_uid=study.study_instance_uid, state=ReceivedInstance.State.RECEIVED
    ).order_by("id")
    persisted = sum(_persist_one(study, received) for received in pending)
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        _refresh_study(study)
        if persisted:
            study.advance(Stage.PERSISTED, now=now or clock.now())
        elif study.stage == Stage.RECEIVED:
            _persisted_nothing(study, now=now or clock.now())
    logger.info("persist: study %s, %d new instances", study_id, persisted)
    return persisted


def study_persist_arrived(*, study_id: int, limit: int | None = None) -> int:
    """Instance rows for what has arrived of a study still arriving, for a streaming sender (routing's
    stream.py): the received rows only (the first `limit` of them), claimed one by one as `study_persist`
    claims them (whichever comes first persists each), without refreshing the study's fields or stage: its
    chain does that at the end."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return 0
    pending = ReceivedInstance.objects.filter(
        study_instance_uid=study.study_instance_uid, state=ReceivedInstance.State.RECEIVED
    ).order_by("id")[:limit]
    return sum(_persist_one(study, received) for received in pending)


def _persisted_nothing(study: Study, *, now: datetime) -> None:
    """A study still at RECEIVED of which this run persisted nothing: PERSISTED if it has instances (an
    earlier run wrote them, then stopped) or nothing was quarantined; else, none of its instances could be
    persisted: REJECTED, with the quarantined instances' reasons."""
    quarantined = ReceivedInstance.objects.filter(
        study_instance_uid=study.study_instance_uid, state=ReceivedInstance.State.QUARANTINED
    )
    count = quarantined.count()
    if study.instances.exists() or not count:
        study.advance(Stage.PERSISTED, now=now)
        return
    reasons = sorted(set(quarantined.values_list("error", flat=True)[:20]))
    detail = f"no instance could be persisted: {count} quarantined ({'; '.join(reasons)})"
    study.advance(Stage.REJECTED, detail=detail[:1000], now=now)
    logger.warning("persist: study %s rejected: all %d instances quarantined", study.pk, count)


def _persist_one(study: Study, received: ReceivedInstance) -> bool:
    try:
        header, sha256 = read_header(settings.STORAGE_ROOT / received.path)
        if header["SOPInstanceUID"] != received.sop_instance_uid:
            raise ValueError("SOP Instance UID in the file differs from the one received")
        if not header["SeriesInstanceUID"]:
            raise ValueError("no Series Instance UID")
    except (InvalidDicomError, OSError, ValueError, KeyError, AttributeError, EOFError, TypeError) as exc:
        _quarantine(received, f"{type(exc).__name__}: {exc}")
        return False
    try:
        return _write_instance(study, received, header, sha256)
    except _Misfiled as exc:
        _quarantine(received, str(exc))
        return False


class _Misfiled(Exception):
    pass


def _write_instance(study: Study, received: ReceivedInstance, header: dict, sha256: str) -> bool:
    with transaction.atomic():
        claimed = ReceivedInstance.objects.filter(pk=received.pk, state=ReceivedInstance.State.RECEIVED).update(
            state=ReceivedInstance.State.PERSISTED
        )
        if not claimed:
            return False
        series, _ = Series.objects.get_or_create(
            series_instance_uid=header["SeriesInstanceUID"],
            defaults={
                "study": study,
                "series_number": header["SeriesNumber"][:12],
                "modality": header["Modality"][:16],
                "body_part": header["BodyPartExamined"][:64],
                "series_description": header["SeriesDescription"][:64],
            },
        )
        if series.study_id != study.pk:
            raise _Misfiled("series belongs to another study")  # rolls the claim back
        Instance.objects.create(
            study=study,
            series=series,
            received=received,
            sop_instance_uid=received.sop_instance_uid,
            sop_class_uid=received.sop_class_uid,
            transfer_syntax_uid=received.transfer_syntax_uid,
            instance_number=header["InstanceNumber"][:12],
            path=received.path,
            size=received.size,
            sha256=sha256,
            header=header,
        )
    return True


def _quarantine(received: ReceivedInstance, reason: str) -> None:
    ReceivedInstance.objects.filter(pk=received.pk).update(
        state=ReceivedInstance.State.QUARANTINED, error=reason[:2000]
    )
    logger.warning("persist: instance %s quarantined: %s", received.pk, reason)


def _refresh_study(study: Study) -> None:
    first = study.instances.order_by("id").first()
    if first is None:
        return
    header = first.header
    study.patient_id = header.get("PatientID", "")[:64]
    study.patient_name = header.get("PatientName", "")[:324]
    study.patient_birth_date = header.get("PatientBirthDate", "")[:8]
    study.patient_sex = header.get("PatientSex", "")[:16]
    study.accession_number = header.get("AccessionNumber", "")[:16]
    study.study_date = header.get("StudyDate", "")[:8]
    study.study_time = whole_seconds(header.get("StudyTime", ""))[:16]
    study.study_id = header.get("StudyID", "")[:16]
    study.body_part = header.get("BodyPartExamined", "")[:64]
    study.study_description = header.get("StudyDescription", "")[:64]
    study.institution_name = header.get("InstitutionName", "")[:64]
    study.referring_physician_name = header.get("ReferringPhysicianName", "")[:324]
    study.requested_priority = header.get("RequestedProcedurePriority", "")[:16]
    study.calling_ae_title = first.received.calling_ae_title
    study.called_ae_title = first.received.called_ae_title
    modalities = list(study.series.order_by("id").values_list("modality", flat=True).distinct())
    study.modality = modalities[0] if modalities else ""
    study.modalities = "\\".join(m for m in dict.fromkeys(modalities) if m)[:64]
    study.num_series = study.series.count()
    study.num_instances = study.instances.count()
    study.total_size = study.instances.aggregate(total=Sum("size"))["total"] or 0
    for series in study.series.all():
        count = series.instances.count()
        if series.num_instances != count:
            series.num_instances = count
            series.save(update_fields=["num_instances"])
    study.save()


def _classification(study: Study) -> classify_rules.Classification:
    headers = list(study.instances.values_list("header", flat=True))
    first = headers[0] if headers else {}
    descriptions = [study.study_description, first.get("RequestedProcedureDescription", "")]
    descriptions += list(study.series.values_list("series_description", flat=True))
    attributes = _priority_attributes(headers)
    return classify_rules.classify(
        modalities=[m for m in study.modalities.split("\\") if m],
        body_part=study.body_part,
        descriptions=[d for d in descriptions if d],
        priority_attributes=attributes,
        rules=[
            classify_rules.MappingRule(
                id=m.pk,
                modality=m.modality,
                body_parts=tuple(m.body_part_list),
                specialty=m.specialty,
                description_pattern=m.description_pattern,
                subspecialty=m.subspecialty,
            )
            for m in SpecialtyMapping.objects.filter(enabled=True)
        ],
        keywords=list(PriorityKeyword.objects.values_list("keyword", "priority")),
        weights={(w.modality.upper(), w.body_part.upper()): w.weight for w in WorkloadWeight.objects.all()},
    )


def _priority_attributes(headers: list[dict]) -> dict[str, str]:
    return {
        keyword: next((h.get(keyword, "") for h in headers if h.get(keyword)), "")
        for keyword in ("RequestedProcedurePriority", "StudyPriorityID")
    }


def header_priority(*, header: dict) -> str:
    """The priority classification gives a study of this one instance (its attributes and descriptions)."""
    descriptions = [
        header.get(k, "") for k in ("StudyDescription", "RequestedProcedureDescription", "SeriesDescription")
    ]
    priority, _ = classify_rules.priority_from(
        attributes=_priority_attributes([header]),
        descriptions=[d for d in descriptions if d],
        keywords=list(PriorityKeyword.objects.values_list("keyword", "priority")),
    )
    return priority


def _apply(study: Study, result: classify_rules.Classification) -> None:
    study.specialty = result.specialty
    study.subspecialty = result.subspecialty
    study.priority = result.priority
    study.workload = result.workload
    study.classification = result.reasons
    study.save(update_fields=["specialty", "subspecialty", "priority", "workload", "classification"])


def study_classify(*, study_id: int, now: datetime | None = None) -> str | None:
    """Specialty (and subspecialty), priority and workload from data tables, each with its reason.
    Returns the priority, or None when the study was not waiting for classification."""
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.PERSISTED:
            return None
        _apply(study, _classification(study))
        study.advance(Stage.CLASSIFIED, now=now or clock.now())
    return study.priority


def study_reclassify(*, study_id: int) -> Study:
    """An admin's "classify again" after the tables changed; the stage is left where it is."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        _apply(study, _classification(study))
    return study


def _sample(instances: list[Instance], size: int = 3) -> list[Instance]:
    """First, middle and last instance of a series: enough to catch a bad series, cheap on large ones."""
    if len(instances) <= size:
        return instances
    return [instances[0], instances[len(instances) // 2], instances[-1]]


def _pixel_results(study: Study) -> list[dict]:
    """Pixel checks per series on a sample of instances; decoding happens here, in the worker."""
    results = []
    # Only files still stored: a late instance can bring a study whose other files were purged back to QC.
    stored = Prefetch("instances", queryset=Instance.objects.filter(file_state=FileState.STORED))
    series_list = study.series.order_by("id").prefetch_related(stored)
    for series in series_list:
        for instance in _sample(sorted(series.instances.all(), key=lambda i: i.pk)):
            image, reason = pixels.decode_sample(
                settings.STORAGE_ROOT / instance.path, max_bytes=settings.QC_MAX_DECODE_BYTES
            )
            where = {"series": series.pk, "instance": instance.pk}
            if image is None:
                results.append({"check": "pixels_decoded", "passed": True, "detail": reason, "not_run": True, **where})
                continue
            # No bits_stored: decode_sample returns rescaled values (HU for CT), so the image's own range
            # is the reference for saturation and clipping.
            values = pixels.metrics(image, pixel_representation=int(instance.header.get("PixelRepresentation") or 0))
            for entry in pixels.checks(values, _limits(series.modality or study.modality)):
                results.append({**entry, **where})
    return results


def _policies() -> dict[tuple[str, str], QcCheck]:
    return {(c.name, c.modality): c for c in QcCheck.objects.filter(enabled=True)}


def _limits(modality: str) -> dict[str, tuple[float | None, float | None]]:
    """Pixel limits for a modality: its own rows over the "*" rows; QcCheck rows are editable in admin."""
    table: dict[str, dict] = {}
    for (check, rule_modality), rule in _policies().items():
        if rule.min_value is not None or rule.max_value is not None:
            table.setdefault(rule_modality, {})[check] = (rule.min_value, rule.max_value)
    return pixels.limits_for(modality.upper(), table)


def study_check(*, study_id: int, now: datetime | None = None) -> str | None:
    """Quality control; returns the verdict.

    1. Header checks over every instance; pixel checks per series on a sample, decoded here, outside
       any transaction (never in the SCP).
    2. Each failing check takes its policy for the study's modality: flag (go on, marked) or hold (stop
       before routing). A study an operator released is not held again for the same content.
    3. Write the assessment; the study moves to CHECKED, or HELD to wait in the admin's held list.
    """
    now = now or clock.now()
    study = Study.objects.filter(pk=study_id, stage=Stage.CLASSIFIED).first()
    if study is None:
        return None
    headers = list(study.instances.values_list("header", flat=True))
    conflicts = study.instances.aggregate(n=Sum("received__conflicting_copies"))["n"] or 0
    results = qc.run_header_checks(headers, today=now.date(), conflicting_copies=conflicts)
    results += _pixel_results(study)
    policies = _policies()
    for entry in results:
        rule = policies.get((entry["check"], study.modality.upper())) or policies.get((entry["check"], "*"))
        entry["policy"] = rule.policy if rule else QcCheck.Policy.FLAG
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.CLASSIFIED:
            return None
        previous = QualityAssessment.objects.filter(study=study).first()
        released = previous is not None and previous.verdict == QualityAssessment.Verdict.RELEASED
        failed = [e for e in results if not e["passed"]]
        if any(e["policy"] == QcCheck.Policy.HOLD for e in failed) and not released:
            verdict = QualityAssessment.Verdict.HELD
        elif released:
            verdict = QualityAssessment.Verdict.RELEASED
        else:
            verdict = QualityAssessment.Verdict.FLAGGED if failed else QualityAssessment.Verdict.PASSED
        QualityAssessment.objects.update_or_create(
            study=study, defaults={"verdict": verdict, "checks": results, "assessed_at": now}
        )
        if verdict == QualityAssessment.Verdict.HELD:
            names = sorted({e["check"] for e in failed if e["policy"] == QcCheck.Policy.HOLD})
            study.advance(Stage.HELD, detail="held for QC: " + ", ".join(names), now=now)
        else:
            study.advance(Stage.CHECKED, now=now)
    logger.info("qc: study %s %s", study_id, verdict)
    return verdict


def study_release(*, study_id: int, user: str, now: datetime | None = None) -> bool:
    """A reviewer releases a held study: it goes on to routing (the caller starts the route step)."""
    return _decide(study_id, user, QualityAssessment.Verdict.RELEASED, Stage.CHECKED, now)


def study_reject(*, study_id: int, user: str, now: datetime | None = None) -> bool:
    """A reviewer rejects a held study: it is kept, never routed or assigned."""
    return _decide(study_id, user, QualityAssessment.Verdict.REJECTED, Stage.REJECTED, now)


def _decide(study_id: int, user: str, verdict: str, stage: str, now: datetime | None) -> bool:
    now = now or clock.now()
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id, stage=Stage.HELD).first()
        if study is None:
            return False
        QualityAssessment.objects.filter(study=study).update(verdict=verdict, decided_by=user[:150], decided_at=now)
        study.advance(stage, detail=f"{verdict} by {user}", now=now)
    return True
