"""Pure rule evaluation with an explanation: facts about a study in, destinations and reasons out."""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class Criterion:
    attribute: str
    operator: str
    value: str = ""


@dataclass(frozen=True)
class Rule:
    id: int
    name: str
    priority: int
    criteria: tuple[Criterion, ...]
    destinations: tuple[str, ...]
    exclusive: bool = False
    fallback: bool = False


@dataclass
class Decision:
    matched: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    explanation: list[dict] = field(default_factory=list)


@lru_cache(maxsize=1024)
def _pattern(expression: str) -> re.Pattern:
    return re.compile(expression, re.IGNORECASE)


def _values(facts: Mapping[str, object], attribute: str) -> list[str]:
    """Every attribute is a list of strings; modality may hold several (one per series)."""
    value = facts.get(attribute, "")
    items = value if isinstance(value, list | tuple | set | frozenset) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def criterion_matches(criterion: Criterion, facts: Mapping[str, object]) -> bool:
    values = _values(facts, criterion.attribute)
    op, wanted = criterion.operator, criterion.value.strip()
    if op == "present":
        return bool(values)
    if op == "absent":
        return not values
    if op == "equals":
        return any(v.upper() == wanted.upper() for v in values)
    if op == "contains":
        return any(wanted.upper() in v.upper() for v in values)
    if op == "regex":
        return any(_pattern(wanted).search(v) for v in values)
    if op == "in":
        options = {o.strip().upper() for o in wanted.split(",") if o.strip()}
        return any(v.upper() in options for v in values)
    raise ValueError(f"unknown operator {op!r}")


def first_failure(rule: Rule, facts: Mapping[str, object]) -> str | None:
    for criterion in rule.criteria:
        if not criterion_matches(criterion, facts):
            seen = ", ".join(_values(facts, criterion.attribute)) or "nothing"
            return f"{criterion.attribute} {criterion.operator} {criterion.value!r} failed (study has {seen})"
    return None


def order(rules: Iterable[Rule]) -> list[Rule]:
    return sorted(rules, key=lambda r: (-r.priority, r.name))


def evaluate(rules: Iterable[Rule], facts: Mapping[str, object]) -> Decision:
    """Rules run by priority (highest first). An exclusive match stops the evaluation; fallback rules
    apply only when no other rule matched."""
    decision = Decision()
    ordered = order(rules)
    stopped_by: str | None = None
    for rule in (r for r in ordered if not r.fallback):
        if stopped_by:
            decision.explanation.append(
                {"rule": rule.name, "matched": False, "reason": f"after exclusive {stopped_by}"}
            )
            continue
        failure = first_failure(rule, facts)
        decision.explanation.append(
            {"rule": rule.name, "matched": failure is None, "reason": failure or "all criteria met"}
        )
        if failure is None:
            _take(decision, rule)
            if rule.exclusive:
                stopped_by = rule.name
    for rule in (r for r in ordered if r.fallback):
        if decision.matched:
            decision.explanation.append(
                {"rule": rule.name, "matched": False, "reason": "fallback: another rule matched"}
            )
            continue
        failure = first_failure(rule, facts)
        decision.explanation.append(
            {"rule": rule.name, "matched": failure is None, "reason": failure or "fallback applied"}
        )
        if failure is None:
            _take(decision, rule)
    return decision


def _take(decision: Decision, rule: Rule) -> None:
    decision.matched.append(rule.name)
    for name in rule.destinations:
        if name not in decision.destinations:
            decision.destinations.append(name)
