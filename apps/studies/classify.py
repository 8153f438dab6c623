"""Pure classification: a study's header in, a specialty and a normalised priority out, with reasons."""

from collections.abc import Iterable
from dataclasses import dataclass

from .defaults import DEFAULT_SPECIALTY

# DICOM RequestedProcedurePriority: STAT, HIGH, ROUTINE, MEDIUM, LOW; sites also send their own words.
PRIORITY_WORDS = {
    "STAT": "STAT",
    "EMERGENCY": "STAT",
    "EMERGENT": "STAT",
    "HIGH": "URGENT",
    "URGENT": "URGENT",
    "ASAP": "URGENT",
    "ROUTINE": "ROUTINE",
    "MEDIUM": "ROUTINE",
    "LOW": "ROUTINE",
}
DEFAULT_PRIORITY = "ROUTINE"


@dataclass(frozen=True)
class MappingRule:
    id: int | None
    modality: str
    body_parts: tuple[str, ...]
    specialty: str


@dataclass(frozen=True)
class Classification:
    specialty: str
    priority: str
    reasons: dict


def match_specialty(*, modalities: Iterable[str], body_part: str, rules: Iterable[MappingRule]) -> tuple[str, str]:
    """The first rule whose modality and body-part keywords both match; else the default.

    A body-part keyword matches when it is contained in BodyPartExamined, so SPINE covers CSPINE.
    """
    modality_set = {m.strip().upper() for m in modalities if m.strip()}
    part = body_part.strip().upper()
    for rule in rules:
        if rule.modality and rule.modality.upper() not in modality_set:
            continue
        if rule.body_parts and not any(keyword in part for keyword in rule.body_parts if part):
            continue
        return rule.specialty, f"mapping {rule.id}: modality {rule.modality or '*'}, body part {part or '-'}"
    return DEFAULT_SPECIALTY, "default: no mapping matched"


def normalise_priority(raw: str) -> tuple[str, str]:
    word = raw.strip().upper()
    if word in PRIORITY_WORDS:
        return PRIORITY_WORDS[word], f"requested priority {word}"
    if not word:
        return DEFAULT_PRIORITY, "default: no requested priority"
    return DEFAULT_PRIORITY, f"default: unknown requested priority {word!r}"


def classify(
    *, modalities: Iterable[str], body_part: str, requested_priority: str, rules: Iterable[MappingRule]
) -> Classification:
    specialty, specialty_reason = match_specialty(modalities=modalities, body_part=body_part, rules=rules)
    priority, priority_reason = normalise_priority(requested_priority)
    return Classification(
        specialty=specialty,
        priority=priority,
        reasons={"specialty": specialty_reason, "priority": priority_reason},
    )
