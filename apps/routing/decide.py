"""Deciding where a study goes: the compiled rules, the facts they read, the decision and the delivery
ledger it extends; dry runs and replays over the same facts."""

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Prefetch
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from apps.core import clock
from apps.studies.headers import header_from_dataset
from apps.studies.models import FileState, ReceivedInstance, Stage, Study
from apps.studies.services import header_priority

from . import rules
from .models import (
    Delivery,
    DeliveryItem,
    Destination,
    ForwardMode,
    RoutingDecision,
    RoutingRule,
    RuleTransform,
    StreamDecision,
)
from .retention import files_purged_error, files_purged_on

logger = logging.getLogger(__name__)


class CompiledRules(NamedTuple):
    version: tuple  # what the rules were compiled from (counts and last changes of rules and destinations)
    engine: rules.Engine
    keywords: frozenset[str]  # the DICOM keywords the criteria read
    on_receipt: rules.Engine  # the on-receipt rules alone: the decision on a study's first instance


# Compiled rules, rebuilt when a rule or destination changes (admin saves bump updated_at).
_compiled: CompiledRules | None = None


def _rules_version() -> tuple:
    return (
        tuple(RoutingRule.objects.aggregate(n=Count("id"), at=Max("updated_at")).values()),
        tuple(Destination.objects.aggregate(n=Count("id"), at=Max("updated_at")).values()),
    )


def _compiled_rule(rule: RoutingRule) -> rules.Rule:
    """A rule row (with criteria, destinations and windows prefetched) as the engine takes it."""
    return rules.Rule(
        id=rule.pk,
        name=rule.name,
        priority=rule.priority,
        exclusive=rule.exclusive,
        fallback=rule.fallback,
        criteria=tuple(rules.Criterion(c.attribute, c.operator, c.value, c.keyword) for c in rule.criteria.all()),
        destinations=tuple(d.name for d in rule.destinations.all() if d.enabled),
        windows=tuple(rules.Window(w.weekday_numbers, w.start, w.end, w.timezone) for w in rule.windows.all()),
    )


def _rule_rows():
    return RoutingRule.objects.prefetch_related("criteria", "destinations", "windows")


def rules_load() -> list[rules.Rule]:
    return [_compiled_rule(rule) for rule in _rule_rows().filter(enabled=True)]


def _compiled_rules() -> CompiledRules:
    global _compiled
    version = _rules_version()
    if _compiled is None or _compiled.version != version:
        loaded = rules_load()
        keywords = frozenset(c.keyword for r in loaded for c in r.criteria if c.keyword)
        streaming = set(
            RoutingRule.objects.filter(enabled=True, forward_mode=ForwardMode.ON_RECEIPT).values_list("pk", flat=True)
        )
        on_receipt = rules.Engine([r for r in loaded if r.id in streaming])
        _compiled = CompiledRules(version, rules.Engine(loaded), keywords, on_receipt)
    return _compiled


def rules_engine() -> tuple[rules.Engine, frozenset[str]]:
    """The compiled engine and the DICOM keywords its criteria read; rebuilt only after a change."""
    compiled = _compiled_rules()
    return compiled.engine, compiled.keywords


def on_receipt_rules_exist() -> bool:
    """Whether an enabled rule forwards on receipt: the SCP then tells the pipeline of each study it starts."""
    return RoutingRule.objects.filter(enabled=True, forward_mode=ForwardMode.ON_RECEIPT).exists()


def study_stream_decide(*, study_id: int, now: datetime | None = None) -> list[int]:
    """Where the on-receipt rules send a study, decided once on its first received instance (the study-level
    facts its header gives; classification has not run), and a Delivery for each destination. Returns the
    deliveries to stream now (those not already being sent)."""
    now = now or clock.now()
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return []
    decision = StreamDecision.objects.filter(study=study).first()
    if decision is None:
        compiled = _compiled_rules()
        first = (
            ReceivedInstance.objects.filter(study_instance_uid=study.study_instance_uid)
            .exclude(state=ReceivedInstance.State.QUARANTINED)
            .order_by("id")
            .first()
        )
        if first is None:
            return []
        try:
            ds = dcmread(Path(settings.STORAGE_ROOT) / first.path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError) as exc:
            logger.warning("stream: study %s's first instance cannot be read (%s): it goes after QC", study_id, exc)
            return []
        facts = facts_from_dataset(
            ds, compiled.keywords, calling_ae=first.calling_ae_title, called_ae=first.called_ae_title
        )
        result = compiled.on_receipt.evaluate(facts, at=now)
        decision, _ = StreamDecision.objects.get_or_create(
            study=study,
            defaults={
                "matched_rules": result.matched,
                "destinations": result.destinations,
                "explanation": result.explanation,
                "decided_at": now,
            },
        )
        logger.info("stream: study %s -> %s on receipt", study_id, decision.destinations or "nowhere")
    due = []
    for destination in Destination.objects.filter(name__in=decision.destinations, enabled=True):
        delivery, created = Delivery.objects.get_or_create(study=study, destination=destination)
        if created and (profile_id := transform_for(destination, decision.matched_rules)):
            Delivery.objects.filter(pk=delivery.pk).update(transform_id=profile_id)
        if delivery.state in (Delivery.State.PENDING, Delivery.State.DELIVERED):
            due.append(delivery.pk)
    return due


def rule_facts(
    header: dict,
    *,
    modalities: list[str],
    sop_classes: list[str],
    priority: str,
    calling_ae: str = "",
    called_ae: str = "",
    keyword_values: dict | None = None,
) -> dict:
    """The facts the rules read, from an instance's header fields (as header_from_dataset gives them) and
    what the header alone cannot say. The one builder: routing a stored study and dry-running a file use it."""
    return {
        "modality": modalities,
        "body_part": header.get("BodyPartExamined", ""),
        "study_description": header.get("StudyDescription", ""),
        "institution": header.get("InstitutionName", ""),
        "referring_physician": header.get("ReferringPhysicianName", ""),
        "priority": priority,
        "calling_ae": calling_ae,
        "called_ae": called_ae,
        "sop_class": sorted(set(sop_classes)),
        **{f"keyword:{kw}": _text(value) for kw, value in (keyword_values or {}).items()},
    }


def study_facts(study: Study, keywords: frozenset[str] = frozenset()) -> dict:
    """A stored study's facts: its first instance's header, its modalities, SOP classes and classified priority."""
    first = study.instances.order_by("id").first()
    return rule_facts(
        first.header if first else {},
        modalities=[m for m in study.modalities.split("\\") if m],
        sop_classes=list(study.instances.values_list("sop_class_uid", flat=True).distinct()),
        priority=study.priority,
        calling_ae=study.calling_ae_title,
        called_ae=study.called_ae_title,
        keyword_values=_keyword_values(study, keywords) if keywords else {},
    )


def _keyword_values(study: Study, keywords: frozenset[str]) -> dict:
    """Any DICOM keyword a rule names, read from the study's first stored instance (header only)."""
    first = study.instances.filter(file_state=FileState.STORED).order_by("id").first()
    if first is None:
        return {}
    try:
        ds = dcmread(Path(settings.STORAGE_ROOT) / first.path, stop_before_pixels=True, specific_tags=list(keywords))
    except (OSError, InvalidDicomError) as exc:
        logger.warning("route: cannot read study %s's header for keyword rules: %s", study.pk, exc)
        return {}
    return {kw: ds.get(kw) for kw in keywords}


def _text(value) -> list[str] | str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return [str(v) for v in value]
    return str(value)


def study_route(*, study_id: int, now: datetime | None = None) -> list[int]:
    """Decide once where the study goes, and make sure every instance is on the ledger.

    1. A study is decided once: late instances follow the first decision to the same destinations.
    2. One Delivery per (study, destination); one DeliveryItem per (instance, destination).
    3. A delivery that gains items goes back to pending. Returns the deliveries to send now.
    """
    now = now or clock.now()
    # Facts are read before the lock (a header read for keyword rules is file I/O); the stage check
    # under the lock guarantees they describe the content QC checked.
    unlocked = Study.objects.filter(pk=study_id, stage=Stage.CHECKED).first()
    if unlocked is None:
        return []
    engine, keywords = rules_engine()
    facts = study_facts(unlocked, keywords)
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None or study.stage != Stage.CHECKED:
            return []
        decision = RoutingDecision.objects.filter(study=study).first()
        if decision is None:
            result = engine.evaluate(facts, at=now)
            decision = RoutingDecision.objects.create(
                study=study,
                matched_rules=result.matched,
                destinations=result.destinations,
                explanation=result.explanation,
                unrouted=not result.destinations,
                decided_at=now,
            )
            logger.info("route: study %s -> %s", study.pk, result.destinations or "unrouted")
            _stream_check(study, decision, now)
        due = _ledger_extend(study, decision.destinations, now, matched_rules=decision.matched_rules)
        study.advance(Stage.ROUTED, detail="" if decision.destinations else "no rule matched", now=now)
    return due


def _stream_check(study: Study, decision: RoutingDecision, now: datetime) -> None:
    """The full decision against the early one of the on-receipt rules: a destination it adds gets the study
    as any; one it drops is recorded as a discrepancy for staff (what was sent is sent)."""
    early = StreamDecision.objects.filter(study=study, checked_at__isnull=True).first()
    if early is None:
        return
    dropped = sorted(set(early.destinations) - set(decision.destinations))
    StreamDecision.objects.filter(pk=early.pk).update(discrepancy=dropped, checked_at=now)
    if dropped:
        logger.warning(
            "route: study %s was streamed on receipt to %s, which the decision after QC does not name",
            study.pk,
            ", ".join(dropped),
        )


def _ledger_extend(
    study: Study, destination_names: list[str], now: datetime, *, matched_rules: list[str] = ()
) -> list[int]:
    due = []
    instance_ids = list(study.instances.values_list("id", flat=True))
    for destination in Destination.objects.filter(name__in=destination_names):
        delivery, created = Delivery.objects.get_or_create(study=study, destination=destination)
        if created and (profile_id := transform_for(destination, matched_rules)):
            Delivery.objects.filter(pk=delivery.pk).update(transform_id=profile_id)
        known = set(delivery.items.values_list("instance_id", flat=True))
        new = [DeliveryItem(delivery=delivery, instance_id=i) for i in instance_ids if i not in known]
        if new:
            DeliveryItem.objects.bulk_create(new, ignore_conflicts=True)
            Delivery.objects.filter(pk=delivery.pk).exclude(state=Delivery.State.SENDING).update(
                state=Delivery.State.PENDING, next_attempt_at=now
            )
        if new or delivery.state == Delivery.State.PENDING:
            due.append(delivery.pk)
    return due


def transform_for(destination: Destination, matched_rules: list[str]) -> int | None:
    """The profile a destination receives a study through: that of the first matched rule (by priority) that
    names one for it, else the destination's own; None: the original bytes."""
    chosen = (
        RuleTransform.objects.filter(rule__name__in=matched_rules, destination=destination)
        .order_by("-rule__priority", "rule__name")
        .values_list("profile_id", flat=True)
        .first()
    )
    return chosen or destination.transform_id


def facts_from_dataset(
    ds, keywords: frozenset[str] = frozenset(), *, calling_ae: str = "", called_ae: str = ""
) -> dict:
    """Facts for one DICOM file, as routing gives them for a study of that one instance."""
    header = header_from_dataset(ds)
    return rule_facts(
        header,
        modalities=[header["Modality"]] if header["Modality"] else [],
        sop_classes=[header["SOPClassUID"]] if header["SOPClassUID"] else [],
        priority=header_priority(header=header),
        calling_ae=calling_ae,
        called_ae=called_ae,
        keyword_values={kw: ds.get(kw) for kw in keywords},
    )


def dry_run(*, facts: dict, now: datetime | None = None) -> rules.Decision:
    """What the current rules would decide for these facts; nothing is written."""
    engine, _ = rules_engine()
    return engine.evaluate(facts, at=now or clock.now())


def dry_run_study(*, study_id: int, now: datetime | None = None) -> rules.Decision:
    _, keywords = rules_engine()
    return dry_run(facts=study_facts(Study.objects.get(pk=study_id), keywords), now=now)


def rules_replay(*, draft_rule_ids: list[int], days: int, now: datetime | None = None) -> list[dict]:
    """Replay the enabled rules plus the given draft rules (enabled or not) over the studies decided in
    the last `days` days; returns the studies that would have gone elsewhere, with both answers."""
    now = now or clock.now()
    loaded = {r.id: r for r in rules_load()}
    loaded |= {draft.pk: _compiled_rule(draft) for draft in _rule_rows().filter(pk__in=draft_rule_ids)}
    engine = rules.Engine(loaded.values())
    keywords = frozenset(c.keyword for r in loaded.values() for c in r.criteria if c.keyword)
    changed = []
    profiles = Profiles()
    deliveries = Prefetch("study__deliveries", queryset=Delivery.objects.select_related("destination", "transform"))
    recent = (
        RoutingDecision.objects.filter(decided_at__gte=now - timedelta(days=days))
        .select_related("study")
        .prefetch_related(deliveries)
    )
    for decision in recent.order_by("decided_at"):
        replayed = engine.evaluate(study_facts(decision.study, keywords), at=decision.decided_at)
        was = _went_through(decision)
        would_be = destinations_through(replayed.destinations, replayed.matched, profiles)
        if would_be != was:
            changed.append(
                {
                    "study": decision.study,
                    "decided_at": decision.decided_at,
                    "was": was,
                    "would_be": would_be,
                    "matched": replayed.matched,
                }
            )
    return changed


class Profiles:
    """The profiles rules and destinations name, read once for a dry run or a whole replay; `of` chooses as
    `transform_for` does at routing (the first matched rule by priority, else the destination's own)."""

    def __init__(self) -> None:
        rows = RuleTransform.objects.values_list("rule__name", "rule__priority", "destination__name", "profile__name")
        self.by_rule = {
            (rule, destination): (-priority, rule, profile) for rule, priority, destination, profile in rows
        }
        self.own = dict(Destination.objects.exclude(transform=None).values_list("name", "transform__name"))

    def of(self, destination: str, matched_rules: list[str]) -> str:
        chosen = sorted(
            self.by_rule[rule, destination] for rule in matched_rules if (rule, destination) in self.by_rule
        )
        return chosen[0][2] if chosen else self.own.get(destination, "")


def destinations_through(names: list[str], matched_rules: list[str], profiles: Profiles | None = None) -> list[str]:
    """Each destination with the transform it would receive the study through: "archive", "research (via
    research-deid)"."""
    profiles = profiles or Profiles()
    return [_through(name, profiles.of(name, matched_rules)) for name in sorted(names)]


def _went_through(decision: RoutingDecision) -> list[str]:
    deliveries = decision.study.deliveries.all()  # prefetched with their destination and transform
    went = {d.destination.name: d.transform.name if d.transform else "" for d in deliveries}
    return [_through(name, went.get(name, "")) for name in sorted(decision.destinations)]


def _through(name: str, profile: str) -> str:
    return f"{name} (via {profile})" if profile else name


def study_reroute(*, study_id: int) -> bool:
    """Forget an unrouted study's decision and make it ready to route again (with today's rules). Raises
    FilesPurged when its files were purged."""
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None:
            return False
        purged_at = files_purged_on(study_id)
        if purged_at is not None:
            raise files_purged_error(purged_at)
        deleted, _ = RoutingDecision.objects.filter(study=study, unrouted=True).delete()
        if not deleted:
            return False
        study.advance(Stage.CHECKED)
    return True
