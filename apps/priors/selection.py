"""Which of a patient's earlier studies are relevant priors of a new one: a pure function over what the
archive answered. No database, no network; every candidate leaves with a reason, chosen or not."""

from dataclasses import dataclass
from datetime import date

from django.db import models


class Match(models.TextChoices):
    MODALITY = "modality", "same modality"
    BODY_PART = "body_part", "same body part"
    MODALITY_OR_BODY_PART = "modality_or_body_part", "same modality or same body part"
    MODALITY_AND_BODY_PART = "modality_and_body_part", "same modality and same body part"
    ANY = "any", "any earlier study"


@dataclass(frozen=True)
class Study:
    """The new study, or a candidate prior as the archive described it (StudyDate as DICOM's DA)."""

    study_instance_uid: str
    study_date: str = ""
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Criteria:
    match: str = Match.MODALITY
    max_age_years: int | None = None  # None: any age
    max_count: int = 2


@dataclass(frozen=True)
class Choice:
    study: Study
    chosen: bool
    reason: str
    age_days: int | None = None


def parse_da(value: str) -> date | None:
    """A DICOM DA (YYYYMMDD); None when missing or not a real date."""
    value = (value or "").strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a year that has none
        return day.replace(year=day.year - years, day=28)


def age_text(days: int | None, whole_years: int | None) -> str:
    if days is None:
        return "date unknown"
    if whole_years:
        return f"{whole_years} year{'s' if whole_years != 1 else ''} old"
    return "same day" if days == 0 else f"{days} day{'s' if days != 1 else ''} old"


def _whole_years(earlier: date, later: date) -> int:
    return later.year - earlier.year - ((later.month, later.day) < (earlier.month, earlier.day))


def relevance(current: Study, prior: Study, match: str) -> tuple[bool, str]:
    """(relevant, why) for one prior under `match`."""
    modalities = sorted(current.modalities & prior.modalities)
    parts = sorted(current.body_parts & prior.body_parts)
    same_modality = f"same modality {'/'.join(modalities)}" if modalities else ""
    same_part = f"same body part {'/'.join(parts)}" if parts else ""
    if match == Match.ANY:
        return True, "any earlier study"
    if match == Match.MODALITY:
        return bool(modalities), same_modality or _differs("modality", current.modalities, prior.modalities)
    if match == Match.BODY_PART:
        return bool(parts), same_part or _differs("body part", current.body_parts, prior.body_parts)
    if match == Match.MODALITY_AND_BODY_PART:
        if modalities and parts:
            return True, f"{same_modality} and {same_part.removeprefix('same ')}"
        if not modalities:
            return False, _differs("modality", current.modalities, prior.modalities)
        return False, _differs("body part", current.body_parts, prior.body_parts)
    if match == Match.MODALITY_OR_BODY_PART:
        found = [text for text in (same_modality, same_part) if text]
        if found:
            return True, " and ".join(found)
        return False, "neither the same modality nor the same body part"
    raise ValueError(f"unknown match {match!r}")


def _differs(what: str, ours: frozenset[str], theirs: frozenset[str]) -> str:
    theirs_text, ours_text = "/".join(sorted(theirs)) or "none given", "/".join(sorted(ours)) or "none"
    return f"not the same {what} ({theirs_text}; this study {ours_text})"


def priors_choose(current: Study, candidates: list[Study], criteria: Criteria, *, today: date) -> list[Choice]:
    """Every candidate with its verdict: the chosen ones first, newest first (undated last), then the others.

    1. The new study itself, a candidate without a UID and a UID listed twice are never priors.
    2. Relevance by `criteria.match`; age from the new study's date (today when it has none); a prior dated
       after the new study is no prior; with an age limit, a prior without a valid date is left out.
    3. Of the relevant ones within age, the `max_count` newest are chosen.
    """
    reference = parse_da(current.study_date) or today
    cutoff = years_before(reference, criteria.max_age_years) if criteria.max_age_years is not None else None
    verdicts: list[Choice] = []
    eligible: list[tuple[Study, str, int | None]] = []
    seen: set[str] = set()
    for prior in candidates:
        uid = prior.study_instance_uid
        if not uid:
            verdicts.append(Choice(prior, False, "no Study Instance UID"))
            continue
        if uid == current.study_instance_uid:
            verdicts.append(Choice(prior, False, "the new study itself"))
            continue
        if uid in seen:
            verdicts.append(Choice(prior, False, "listed twice"))
            continue
        seen.add(uid)
        day = parse_da(prior.study_date)
        days = (reference - day).days if day else None
        age = age_text(days, _whole_years(day, reference) if day and days >= 0 else None)
        relevant, why = relevance(current, prior, criteria.match)
        if not relevant:
            verdicts.append(Choice(prior, False, why, days))
        elif day is None and cutoff is not None:
            verdicts.append(Choice(prior, False, f"{why}, but no valid study date (age unknown)"))
        elif day is not None and day > reference:
            verdicts.append(Choice(prior, False, f"{why}, but dated after this study ({prior.study_date})", days))
        elif cutoff is not None and day < cutoff:
            limit = criteria.max_age_years
            verdicts.append(Choice(prior, False, f"{why}, but older than {limit} year(s) ({age})", days))
        else:
            eligible.append((prior, f"{why}, {age}", days))
    # Newest first: smallest age; undated last; the UID breaks ties so the order never depends on the archive's.
    eligible.sort(key=lambda e: (e[2] is None, e[2] if e[2] is not None else 0, e[0].study_instance_uid))
    chosen = [Choice(prior, True, why, days) for prior, why, days in eligible[: criteria.max_count]]
    beyond = [
        Choice(prior, False, f"{why}, but beyond the {criteria.max_count} newest relevant", days)
        for prior, why, days in eligible[criteria.max_count :]
    ]
    return chosen + beyond + verdicts
