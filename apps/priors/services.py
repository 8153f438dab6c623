"""Prior fetching: start a fetch per (routed study, rule, destination), and run one: C-FIND the archive,
choose (selection.py), C-MOVE each chosen prior to the destination. Failures are classified: an archive we
cannot reach retries with the archive's backoff; a refusal no retry mends ends the fetch `failed`, with why."""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from pydicom.dataset import Dataset

from apps.core import clock
from apps.routing import dicom_send
from apps.routing.health import dicom_target
from apps.routing.models import Delivery, Protocol
from apps.routing.services import retry_delay
from apps.studies.models import Study

from . import selection
from .models import PriorFetch, PriorRule, PriorStudy

logger = logging.getLogger(__name__)

# Characters that would make a C-FIND by PatientID match other patients (wildcards, a value list).
QUERY_SPECIAL = set("*?\\")
BODY_PART_MATCHES = {
    selection.Match.BODY_PART,
    selection.Match.MODALITY_OR_BODY_PART,
    selection.Match.MODALITY_AND_BODY_PART,
}


def priors_start(*, study_id: int, now: datetime | None = None) -> list[int]:
    """One fetch per (enabled rule that applies, DICOM destination the study was routed to); idempotent.
    Returns the fetches created now (the Beat sweeper finds any whose start message is lost)."""
    now = now or clock.now()
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return []
    modalities = _modalities(study)
    enabled = PriorRule.objects.filter(enabled=True, archive__enabled=True)
    rules = [r for r in enabled if r.applies_to(modalities)]
    if not rules:
        return []
    # A DICOMweb destination has no AE title an archive could move to: no fetch for it.
    deliveries = Delivery.objects.filter(study=study, destination__protocol=Protocol.DICOM)
    destination_ids = list(deliveries.values_list("destination_id", flat=True))
    created_ids = []
    for rule in rules:
        for destination_id in destination_ids:
            fetch, created = PriorFetch.objects.get_or_create(
                study=study, rule=rule, destination_id=destination_id, defaults={"next_attempt_at": now}
            )
            if created:
                created_ids.append(fetch.pk)
    if created_ids:
        logger.info("priors: study %s, %d fetch(es) started", study.pk, len(created_ids))
    return created_ids


def prior_fetches_due(*, now: datetime | None = None, lease: float | None = None, limit: int = 200) -> list[int]:
    """Pending fetches whose time has come, leased so the next tick does not enqueue them again; a fetch
    left running by a killed worker is given back after the lease."""
    now = now or clock.now()
    lease = timedelta(seconds=lease if lease is not None else settings.RECONCILE_AFTER)
    PriorFetch.objects.filter(state=PriorFetch.State.RUNNING, claimed_at__lt=now - lease).update(
        state=PriorFetch.State.PENDING, next_attempt_at=now, claimed_at=None
    )
    pending = PriorFetch.objects.filter(state=PriorFetch.State.PENDING, next_attempt_at__lte=now)
    due = list(pending.order_by("next_attempt_at", "id").values_list("id", flat=True)[:limit])
    PriorFetch.objects.filter(pk__in=due).update(next_attempt_at=now + lease)
    return due


def prior_fetch_retry(*, fetch_id: int, now: datetime | None = None) -> bool:
    """An operator's retry of a failed fetch: what is not yet at the destination is moved again."""
    now = now or clock.now()
    with transaction.atomic():
        if not PriorFetch.objects.filter(pk=fetch_id, state=PriorFetch.State.FAILED).update(
            state=PriorFetch.State.PENDING, attempts=0, next_attempt_at=now, error="", finished_at=None
        ):
            return False
        PriorStudy.objects.filter(fetch_id=fetch_id, state=PriorStudy.State.FAILED).update(
            state=PriorStudy.State.PENDING, error=""
        )
    return True


def prior_fetch_run(*, fetch_id: int, now: datetime | None = None) -> str | None:
    """Run one fetch; returns its new state, or None when it was not ours to run.

    1. Claim it by compare-and-set (pending -> running): a duplicated message does nothing.
    2. Nothing to ask (no PatientID, the destination is the archive, ...): done or failed with why.
    3. C-FIND once (a retry after the archive answered moves what is left, it does not ask again);
       choose; record every candidate's verdict; a chosen prior already at the destination is not moved.
    4. C-MOVE each chosen prior not yet moved; record each outcome as it comes.
    5. Something transient left: pending again after the archive's backoff, failed once its budget is spent.
    """
    now = now or clock.now()
    claimed = PriorFetch.objects.filter(pk=fetch_id, state=PriorFetch.State.PENDING).update(
        state=PriorFetch.State.RUNNING, claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    fetch = PriorFetch.objects.select_related("study", "rule__archive", "destination").get(pk=fetch_id)
    if reason := _nothing_to_ask(fetch):
        state, text = reason
        return _finish(fetch, state, text, error=text if state == PriorFetch.State.FAILED else "", now=now)
    target = dicom_target(fetch.rule.archive)
    if fetch.queried_at is None:
        failure = _query(fetch, target, now=now)
        if failure is not None:
            return _after_failure(fetch, failure, now=now)
    failure = None
    for prior in fetch.priors.filter(state=PriorStudy.State.PENDING).order_by("id"):
        outcome = _move(fetch, prior, target)
        if outcome.kind == dicom_send.TRANSIENT:
            failure = failure or outcome
    if failure is not None:
        return _after_failure(fetch, failure, now=now)
    if fetch.priors.filter(state=PriorStudy.State.FAILED).exists():
        errors = fetch.priors.filter(state=PriorStudy.State.FAILED).values_list("error", flat=True)
        return _finish(fetch, PriorFetch.State.FAILED, "", error=next(iter(errors), ""), now=now)
    moved = fetch.priors.filter(state=PriorStudy.State.MOVED).count()
    return _finish(fetch, PriorFetch.State.DONE, f"{moved} prior(s) moved", now=now)


def _nothing_to_ask(fetch: PriorFetch) -> tuple[str, str] | None:
    """(final state, why) when there is nothing to ask the archive."""
    archive, destination = fetch.rule.archive, fetch.destination
    patient_id = fetch.study.patient_id.strip()
    if not patient_id:
        return (PriorFetch.State.DONE, "the study has no PatientID: nothing to ask for")
    if QUERY_SPECIAL & set(patient_id):
        return (PriorFetch.State.DONE, "the PatientID holds C-FIND wildcard characters: not asked")
    if destination.pk == archive.pk or (destination.host, destination.port) == (archive.host, archive.port):
        return (PriorFetch.State.DONE, "the destination is the archive: it holds the priors already")
    if destination.protocol != Protocol.DICOM:
        return (PriorFetch.State.FAILED, f"{destination.name} is no DICOM node: C-MOVE needs its AE title")
    if archive.protocol != Protocol.DICOM or not archive.enabled:
        return (PriorFetch.State.FAILED, f"the archive {archive.name} is disabled or no DICOM node")
    return None


def _modalities(study: Study) -> set[str]:
    found = {m.strip().upper() for m in study.modalities.split("\\") if m.strip()}
    return found | ({study.modality.strip().upper()} if study.modality.strip() else set())


def _body_parts(study: Study) -> set[str]:
    parts = {p.strip().upper() for p in study.series.values_list("body_part", flat=True) if p and p.strip()}
    return parts | ({study.body_part.strip().upper()} if study.body_part.strip() else set())


def _study_query(patient_id: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    for keyword in ("StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "BodyPartExamined", "AccessionNumber"):
        setattr(identifier, keyword, "")
    return identifier


def _series_query(study_instance_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_instance_uid
    for keyword in ("SeriesInstanceUID", "Modality", "BodyPartExamined"):
        setattr(identifier, keyword, "")
    return identifier


def _values(dataset: Dataset, keyword: str) -> set[str]:
    value = dataset.get(keyword)
    if value is None:
        return set()
    items = [value] if isinstance(value, str) else list(value)
    return {str(v).strip().upper() for v in items if str(v).strip()}


def _candidates(fetch: PriorFetch, target: dicom_send.Target) -> tuple[list[selection.Study], dicom_send.Result]:
    """The patient's studies as the archive lists them (and, where the rule needs body parts the STUDY level
    did not give, those of their series); only answers for exactly our PatientID."""
    patient_id = fetch.study.patient_id.strip()
    (answer,) = dicom_send.find(target, [_study_query(patient_id)])
    if answer.result.kind != dicom_send.DELIVERED:
        return [], answer.result
    found = [
        selection.Study(
            study_instance_uid=str(match.get("StudyInstanceUID", "")).strip(),
            study_date=str(match.get("StudyDate", "")).strip(),
            modalities=frozenset(_values(match, "ModalitiesInStudy")),
            body_parts=frozenset(_values(match, "BodyPartExamined")),
        )
        for match in answer.matches
        # An archive that matched loosely: never another patient's studies.
        if str(match.get("PatientID", patient_id)).strip() == patient_id
    ]
    lacking = [c for c in found if not c.body_parts and c.study_instance_uid]
    if fetch.rule.match not in BODY_PART_MATCHES or not lacking:
        return found, answer.result
    answers = dicom_send.find(target, [_series_query(c.study_instance_uid) for c in lacking])
    if failed := next((a.result for a in answers if a.result.kind != dicom_send.DELIVERED), None):
        return [], failed
    series = {c.study_instance_uid: a.matches for c, a in zip(lacking, answers, strict=True)}
    completed = []
    for c in found:
        rows = series.get(c.study_instance_uid, [])
        modalities = set().union(*(_values(r, "Modality") for r in rows)) if rows else set()
        parts = set().union(*(_values(r, "BodyPartExamined") for r in rows)) if rows else set()
        completed.append(
            selection.Study(
                c.study_instance_uid,
                c.study_date,
                c.modalities | frozenset(modalities),
                c.body_parts | frozenset(parts),
            )
        )
    return completed, answer.result


def _query(fetch: PriorFetch, target: dicom_send.Target, *, now: datetime) -> dicom_send.Result | None:
    """Ask, choose, and record the choice; None when done, else why the archive did not answer."""
    candidates, result = _candidates(fetch, target)
    if result.kind != dicom_send.DELIVERED:
        return result
    current = selection.Study(
        study_instance_uid=fetch.study.study_instance_uid,
        study_date=fetch.study.study_date,
        modalities=frozenset(_modalities(fetch.study)),
        body_parts=frozenset(_body_parts(fetch.study)),
    )
    rule = fetch.rule
    criteria = selection.Criteria(match=rule.match, max_age_years=rule.max_age_years, max_count=rule.max_count)
    choices = selection.priors_choose(current, candidates, criteria, today=now.date())
    chosen = [c for c in choices if c.chosen]
    there = _already_there(fetch, [c.study.study_instance_uid for c in chosen])
    with transaction.atomic():
        for choice in chosen:
            uid = choice.study.study_instance_uid
            PriorStudy.objects.get_or_create(
                fetch=fetch,
                study_instance_uid=uid,
                defaults={
                    "study_date": choice.study.study_date[:8],
                    "modalities": "\\".join(sorted(choice.study.modalities))[:64],
                    "reason": choice.reason[:255],
                    "state": PriorStudy.State.ALREADY_THERE if uid in there else PriorStudy.State.PENDING,
                },
            )
        fetch.candidates = [_verdict(c, there) for c in choices]
        fetch.queried_at = now
        fetch.detail = f"{len(candidates)} earlier stud{'y' if len(candidates) == 1 else 'ies'}, {len(chosen)} chosen"
        fetch.save(update_fields=["candidates", "queried_at", "detail"])
    logger.info(
        "prior fetch %s: %d candidate(s), %d chosen, %d already there",
        fetch.pk,
        len(candidates),
        len(chosen),
        len(there),
    )
    return None


def _verdict(choice: selection.Choice, there: set[str]) -> dict:
    uid = choice.study.study_instance_uid
    return {
        "study_instance_uid": uid,
        "study_date": choice.study.study_date,
        "modalities": sorted(choice.study.modalities),
        "body_parts": sorted(choice.study.body_parts),
        "chosen": choice.chosen,
        "reason": choice.reason + (" (already at the destination)" if choice.chosen and uid in there else ""),
    }


def _already_there(fetch: PriorFetch, uids: list[str]) -> set[str]:
    """Of `uids`, those this destination has had already: moved there by another fetch, or delivered there
    by this router itself."""
    moved = PriorStudy.objects.filter(
        study_instance_uid__in=uids, state=PriorStudy.State.MOVED, fetch__destination=fetch.destination
    ).exclude(fetch=fetch)
    delivered = Delivery.objects.filter(
        study__study_instance_uid__in=uids, destination=fetch.destination, state=Delivery.State.DELIVERED
    )
    return set(moved.values_list("study_instance_uid", flat=True)) | set(
        delivered.values_list("study__study_instance_uid", flat=True)
    )


def _move(fetch: PriorFetch, prior: PriorStudy, target: dicom_send.Target) -> dicom_send.Result:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = prior.study_instance_uid
    answer = dicom_send.move(target, identifier, fetch.destination.ae_title)
    result = answer.result
    prior.status, prior.completed, prior.failed = result.status, answer.completed, answer.failed
    prior.error = result.error[:2000]
    if result.kind == dicom_send.DELIVERED:
        prior.state, prior.moved_at = PriorStudy.State.MOVED, clock.now()
    elif result.kind == dicom_send.PERMANENT:
        prior.state = PriorStudy.State.FAILED
    prior.save(update_fields=["status", "completed", "failed", "error", "state", "moved_at"])
    logger.info(
        "prior fetch %s: C-MOVE of study %s to %s: %s (%d sent, %d failed)",
        fetch.pk,
        prior.study_instance_uid,
        fetch.destination.name,
        result.kind,
        answer.completed,
        answer.failed,
    )
    return result


def _after_failure(fetch: PriorFetch, failure: dicom_send.Result, *, now: datetime) -> str:
    archive = fetch.rule.archive
    if failure.kind == dicom_send.PERMANENT or fetch.attempts >= archive.max_attempts:
        spent = "" if failure.kind == dicom_send.PERMANENT else f" (after {fetch.attempts} attempts)"
        return _finish(fetch, PriorFetch.State.FAILED, "", error=failure.error + spent, now=now)
    wait = retry_delay(archive, fetch.attempts)
    PriorFetch.objects.filter(pk=fetch.pk, state=PriorFetch.State.RUNNING).update(
        state=PriorFetch.State.PENDING,
        next_attempt_at=now + timedelta(seconds=wait),
        claimed_at=None,
        error=failure.error[:2000],
    )
    logger.warning("prior fetch %s: %s; again in %.0f s", fetch.pk, failure.error, wait)
    return PriorFetch.State.PENDING


def _finish(fetch: PriorFetch, state: str, detail: str, *, error: str = "", now: datetime) -> str:
    updates = {"state": state, "finished_at": now, "claimed_at": None, "error": error[:2000]}
    if detail:
        updates["detail"] = detail[:255]
    PriorFetch.objects.filter(pk=fetch.pk, state=PriorFetch.State.RUNNING).update(**updates)
    if state == PriorFetch.State.FAILED:
        logger.warning("prior fetch %s failed: %s", fetch.pk, error or detail)
    return state
