"""Pure rule evaluation with an explanation: facts about a study in, destinations and reasons out.

`Engine` compiles the rules once (order, case-folded values, compiled regular expressions, one closure
per criterion); `criterion_matches` is the plain interpretation of one criterion, kept as the reference
the engine is tested and benchmarked against.
"""

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time

from apps.core.timewindows import in_window


@dataclass(frozen=True)
class Criterion:
    attribute: str
    operator: str
    value: str = ""
    keyword: str = ""

    @property
    def fact(self) -> str:
        """The facts key this criterion reads: the attribute, or keyword:<DICOM keyword>."""
        return f"keyword:{self.keyword}" if self.keyword else self.attribute

    def __str__(self) -> str:
        return f"{self.keyword or self.attribute} {self.operator} {self.value!r}"


@dataclass(frozen=True)
class Window:
    weekdays: frozenset[int]
    start: time
    end: time
    tz: str

    def open_at(self, at: datetime) -> bool:
        return in_window(weekdays=self.weekdays, start=self.start, end=self.end, tz=self.tz, at=at)


@dataclass(frozen=True)
class Rule:
    id: int
    name: str
    priority: int
    criteria: tuple[Criterion, ...]
    destinations: tuple[str, ...]
    exclusive: bool = False
    fallback: bool = False
    windows: tuple[Window, ...] = ()


@dataclass
class Decision:
    matched: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    explanation: list[dict] = field(default_factory=list)


def values(facts: Mapping[str, object], key: str) -> list[str]:
    """Every fact is a list of strings; modality and SOP class may hold several."""
    value = facts.get(key, "")
    items = value if isinstance(value, list | tuple | set | frozenset) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _options(value: str) -> set[str]:
    return {o.strip().upper() for o in value.split(",") if o.strip()}


def criterion_matches(criterion: Criterion, facts: Mapping[str, object]) -> bool:
    found = values(facts, criterion.fact)
    op, wanted = criterion.operator, criterion.value.strip()
    if op == "present":
        return bool(found)
    if op == "absent":
        return not found
    if op == "equals":
        return any(v.upper() == wanted.upper() for v in found)
    if op == "contains":
        return any(wanted.upper() in v.upper() for v in found)
    if op == "regex":
        return any(re.search(wanted, v, re.IGNORECASE) for v in found)
    if op == "in":
        return any(v.upper() in _options(wanted) for v in found)
    if op == "not_in":
        return not any(v.upper() in _options(wanted) for v in found)
    raise ValueError(f"unknown operator {op!r}")


Test = Callable[[list[str], list[str]], bool]  # (values, upper-cased values) -> matched


def _compile(criterion: Criterion) -> Test:
    op, wanted = criterion.operator, criterion.value.strip()
    upper = wanted.upper()
    if op == "present":
        return lambda found, _: bool(found)
    if op == "absent":
        return lambda found, _: not found
    if op == "equals":
        return lambda _, ups: upper in ups
    if op == "contains":
        return lambda _, ups: any(upper in v for v in ups)
    if op == "regex":
        pattern = re.compile(wanted, re.IGNORECASE)
        return lambda found, _: any(pattern.search(v) for v in found)
    options = _options(wanted)
    if op == "in":
        return lambda _, ups: any(v in options for v in ups)
    if op == "not_in":
        return lambda _, ups: not any(v in options for v in ups)
    raise ValueError(f"unknown operator {op!r}")


class Engine:
    """Rules compiled once; evaluate() is then a pass of closures over facts folded once per study."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        ordered = sorted(rules, key=lambda r: (-r.priority, r.name))
        # Criterion descriptions are built once: explanations are most of the work per study.
        compiled = [(rule, [(c, _compile(c), str(c)) for c in rule.criteria]) for rule in ordered]
        self.regular = [item for item in compiled if not item[0].fallback]
        self.fallbacks = [item for item in compiled if item[0].fallback]

    def evaluate(self, facts: Mapping[str, object], at: datetime | None = None) -> Decision:
        """Rules run by priority (highest first). An exclusive match stops the evaluation; fallback rules
        apply only when no other rule matched; a rule with windows applies only inside one of them."""
        folded: dict[str, tuple[list[str], list[str]]] = {}

        def fact(key: str) -> tuple[list[str], list[str]]:
            if key not in folded:
                found = values(facts, key)
                folded[key] = (found, [v.upper() for v in found])
            return folded[key]

        def failure(rule: Rule, tests) -> str | None:
            if rule.windows and at is not None and not any(w.open_at(at) for w in rule.windows):
                return "outside its time window"
            for criterion, test, described in tests:
                found, ups = fact(criterion.fact)
                if not test(found, ups):
                    return f"{described} failed (study has {', '.join(found) or 'nothing'})"
            return None

        decision = Decision()
        stopped_by: str | None = None
        for rule, tests in self.regular:
            if stopped_by:
                decision.explanation.append(_entry(rule, f"after exclusive {stopped_by}"))
                continue
            reason = failure(rule, tests)
            decision.explanation.append(_entry(rule, reason, matched_reason="all criteria met"))
            if reason is None:
                _take(decision, rule)
                stopped_by = rule.name if rule.exclusive else None
        for rule, tests in self.fallbacks:
            if decision.matched:
                decision.explanation.append(_entry(rule, "fallback: another rule matched"))
                continue
            reason = failure(rule, tests)
            decision.explanation.append(_entry(rule, reason, matched_reason="fallback applied"))
            if reason is None:
                _take(decision, rule)
        return decision


def evaluate(rules: Iterable[Rule], facts: Mapping[str, object], at: datetime | None = None) -> Decision:
    return Engine(rules).evaluate(facts, at)


def _entry(rule: Rule, reason: str | None, matched_reason: str = "") -> dict:
    return {"rule": rule.name, "matched": reason is None, "reason": reason or matched_reason}


def _take(decision: Decision, rule: Rule) -> None:
    decision.matched.append(rule.name)
    for name in rule.destinations:
        if name not in decision.destinations:
            decision.destinations.append(name)
