"""Pure classification: a study's header in; specialty, subspecialty, priority and workload out, each with
its reason. Unknown values take the configured defaults, and say so."""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .defaults import DEFAULT_SPECIALTY

# DICOM RequestedProcedurePriority: STAT, HIGH, ROUTINE, MEDIUM, LOW; StudyPriorityID: HIGH, MED, LOW.
PRIORITY_WORDS = {
    "STAT": "STAT",
    "EMERGENCY": "STAT",
    "EMERGENT": "STAT",
    "HIGH": "URGENT",
    "URGENT": "URGENT",
    "ASAP": "URGENT",
    "ROUTINE": "ROUTINE",
    "MEDIUM": "ROUTINE",
    "MED": "ROUTINE",
    "LOW": "ROUTINE",
}
DEFAULT_PRIORITY = "ROUTINE"
RANK = {"ROUTINE": 0, "URGENT": 1, "STAT": 2}
DEFAULT_WORKLOAD = 1.0


@dataclass(frozen=True)
class MappingRule:
    id: int | None
    modality: str
    body_parts: tuple[str, ...]
    specialty: str
    description_pattern: str = ""
    subspecialty: str = ""


@dataclass(frozen=True)
class Classification:
    specialty: str
    subspecialty: str
    priority: str
    workload: float
    reasons: dict


def match_specialty(
    *, modalities: Iterable[str], body_part: str, rules: Iterable[MappingRule], descriptions: Iterable[str] = ()
) -> tuple[str, str, str]:
    """(specialty, subspecialty, reason) of the first rule whose modality, body-part keywords and description
    pattern all match; else the default. A body-part keyword matches when contained in BodyPartExamined,
    so SPINE covers CSPINE; the pattern is searched in the study's and every series' description."""
    modality_set = {m.strip().upper() for m in modalities if m.strip()}
    part = body_part.strip().upper()
    texts = [d for d in descriptions if d]
    for rule in rules:
        if rule.modality and rule.modality.upper() not in modality_set:
            continue
        if rule.body_parts and not (part and any(keyword in part for keyword in rule.body_parts)):
            continue
        if rule.description_pattern and not any(re.search(rule.description_pattern, t, re.IGNORECASE) for t in texts):
            continue
        reason = f"mapping {rule.id}: modality {rule.modality or '*'}, body part {part or '-'}"
        if rule.description_pattern:
            reason += f", description /{rule.description_pattern}/"
        return rule.specialty, rule.subspecialty, reason
    return DEFAULT_SPECIALTY, "", "default: no mapping matched"


def normalise_priority(raw: str) -> tuple[str, str]:
    word = raw.strip().upper()
    if word in PRIORITY_WORDS:
        return PRIORITY_WORDS[word], f"requested priority {word}"
    if not word:
        return DEFAULT_PRIORITY, "default: no requested priority"
    return DEFAULT_PRIORITY, f"default: unknown requested priority {word!r}"


def priority_from(
    *, attributes: Mapping[str, str], descriptions: Iterable[str], keywords: Iterable[tuple[str, str]]
) -> tuple[str, str]:
    """The highest priority any source gives: priority attributes (RequestedProcedurePriority,
    StudyPriorityID) and configured words in the descriptions (STAT, CODE STROKE, ...)."""
    candidates = []
    for name, raw in attributes.items():
        word = (raw or "").strip().upper()
        if word in PRIORITY_WORDS:
            candidates.append((PRIORITY_WORDS[word], f"{name} {word}"))
    upper = [d.upper() for d in descriptions if d]
    for keyword, priority in keywords:
        pattern = re.compile(rf"(?<![A-Z0-9]){re.escape(keyword.upper())}(?![A-Z0-9])")
        if any(pattern.search(text) for text in upper):
            candidates.append((priority, f"description says {keyword.upper()}"))
    if not candidates:
        unknown = [f"{k} {v!r}" for k, v in attributes.items() if (v or "").strip()]
        reason = f"default: unknown {', '.join(unknown)}" if unknown else "default: no priority given"
        return DEFAULT_PRIORITY, reason
    return max(candidates, key=lambda c: RANK[c[0]])


def workload_for(*, modality: str, body_part: str, weights: Mapping[tuple[str, str], float]) -> tuple[float, str]:
    """The (modality, body part) weight, else the modality's, else the default."""
    key = (modality.upper(), body_part.upper())
    if key in weights:
        return weights[key], f"weight for {key[0]} {key[1]}"
    if (key[0], "") in weights:
        return weights[(key[0], "")], f"weight for {key[0]}"
    return DEFAULT_WORKLOAD, f"default: no weight for {key[0] or 'no modality'}"


def classify(
    *,
    modalities: list[str],
    body_part: str,
    descriptions: list[str],
    priority_attributes: Mapping[str, str],
    rules: Iterable[MappingRule],
    keywords: Iterable[tuple[str, str]] = (),
    weights: Mapping[tuple[str, str], float] | None = None,
) -> Classification:
    specialty, subspecialty, specialty_reason = match_specialty(
        modalities=modalities, body_part=body_part, rules=rules, descriptions=descriptions
    )
    priority, priority_reason = priority_from(
        attributes=priority_attributes, descriptions=descriptions, keywords=keywords
    )
    workload, workload_reason = workload_for(
        modality=modalities[0] if modalities else "", body_part=body_part, weights=weights or {}
    )
    return Classification(
        specialty=specialty,
        subspecialty=subspecialty,
        priority=priority,
        workload=workload,
        reasons={"specialty": specialty_reason, "priority": priority_reason, "workload": workload_reason},
    )
