"""Writes on studies: register, persist, classify, check. Each is idempotent and guarded by the stage."""

import logging
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from pydicom.errors import InvalidDicomError

from apps.core import clock

from . import classify as classify_rules
from . import qc
from .headers import read_header
from .models import (
    Instance,
    QualityAssessment,
    ReceivedInstance,
    Series,
    SpecialtyMapping,
    Stage,
    Study,
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
    try:
        with transaction.atomic():
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
            )
    except IntegrityError:
        if ReceivedInstance.objects.filter(sop_instance_uid=sop_instance_uid).exists():
            return False
        raise
    return True


def study_register(*, study_instance_uid: str) -> Study:
    study, _ = Study.objects.get_or_create(study_instance_uid=study_instance_uid)
    return study


def study_persist(*, study_id: int, now: datetime | None = None) -> int:
    """Turn the study's received instances into Series and Instance rows.

    1. Read each received file's header outside any transaction.
    2. Claim the received row (received -> persisted) and write Series and Instance in one transaction.
    3. Quarantine what cannot be read, with its reason; the rest goes on.
    4. Refresh the study's header fields and counts; new content sets the stage back to PERSISTED.
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
        if persisted or study.stage == Stage.RECEIVED:
            study.advance(Stage.PERSISTED, now=now or clock.now())
    logger.info("persist: study %s, %d new instances", study_id, persisted)
    return persisted


def _persist_one(study: Study, received: ReceivedInstance) -> bool:
    try:
        header, sha256 = read_header(settings.STORAGE_ROOT / received.path)
        if header["SOPInstanceUID"] != received.sop_instance_uid:
            raise ValueError("SOP Instance UID in the file differs from the one received")
        if not header["SeriesInstanceUID"]:
            raise ValueError("no Series Instance UID")
    except (InvalidDicomError, OSError, ValueError, KeyError, AttributeError, EOFError) as exc:
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
    study.accession_number = header.get("AccessionNumber", "")[:16]
    study.study_date = header.get("StudyDate", "")[:8]
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


def study_classify(*, study_id: int, now: datetime | None = None) -> None:
    """Specialty from the mapping rows, priority normalised; each with its reason."""
    rules = [
        classify_rules.MappingRule(
            id=m.pk, modality=m.modality, body_parts=tuple(m.body_part_list), specialty=m.specialty
        )
        for m in SpecialtyMapping.objects.filter(enabled=True)
    ]
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.PERSISTED:
            return
        result = classify_rules.classify(
            modalities=study.modalities.split("\\"),
            body_part=study.body_part,
            requested_priority=study.requested_priority,
            rules=rules,
        )
        study.specialty = result.specialty
        study.priority = result.priority
        study.classification = result.reasons
        study.save(update_fields=["specialty", "priority", "classification"])
        study.advance(Stage.CLASSIFIED, now=now or clock.now())


def study_check(*, study_id: int, now: datetime | None = None) -> None:
    """Header QC over every instance; a failing check flags the study, never drops it."""
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.CLASSIFIED:
            return
        headers = list(study.instances.values_list("header", flat=True))
        checks = qc.run_header_checks(headers)
        verdict = (
            QualityAssessment.Verdict.PASSED if all(c["passed"] for c in checks) else QualityAssessment.Verdict.FLAGGED
        )
        now = now or clock.now()
        QualityAssessment.objects.update_or_create(
            study=study, defaults={"verdict": verdict, "checks": checks, "assessed_at": now}
        )
        study.advance(Stage.CHECKED, now=now)
