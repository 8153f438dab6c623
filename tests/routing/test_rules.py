import pytest

from apps.routing.rules import Criterion, Rule, criterion_matches, evaluate

FACTS = {
    "modality": ["CT", "SR"],
    "body_part": "HEAD",
    "study_description": "CT HEAD WO CONTRAST",
    "institution": "North Hospital",
    "referring_physician": "House^Gregory",
    "priority": "STAT",
    "calling_ae": "CT_NORTH",
    "called_ae": "ROUTER",
}


@pytest.mark.parametrize(
    ("attribute", "operator", "value", "expected"),
    [
        ("modality", "equals", "CT", True),
        ("modality", "equals", "ct", True),
        ("modality", "equals", "MR", False),
        ("modality", "in", "MR, CT", True),
        ("modality", "in", "MR,US", False),
        ("body_part", "contains", "EA", True),
        ("study_description", "regex", r"^ct\s+head", True),
        ("study_description", "regex", r"CHEST", False),
        ("institution", "equals", "north hospital", True),
        ("referring_physician", "contains", "House", True),
        ("priority", "in", "STAT,URGENT", True),
        ("priority", "equals", "ROUTINE", False),
        ("calling_ae", "equals", "CT_NORTH", True),
        ("called_ae", "equals", "OTHER", False),
        ("institution", "present", "", True),
        ("institution", "absent", "", False),
    ],
)
def test_each_criterion(attribute, operator, value, expected):
    assert criterion_matches(Criterion(attribute, operator, value), FACTS) is expected


def test_absent_and_present_on_an_empty_attribute():
    facts = {**FACTS, "institution": ""}
    assert criterion_matches(Criterion("institution", "absent"), facts)
    assert not criterion_matches(Criterion("institution", "present"), facts)


def rule(name, priority=100, criteria=(), destinations=("a",), **kw):
    return Rule(id=priority, name=name, priority=priority, criteria=tuple(criteria), destinations=destinations, **kw)


CT = Criterion("modality", "equals", "CT")
MR = Criterion("modality", "equals", "MR")


def test_rules_run_by_priority_and_every_match_adds_its_destinations():
    decision = evaluate(
        [rule("low", 10, [CT], ("archive",)), rule("high", 200, [CT], ("neuro", "archive"))],
        FACTS,
    )
    assert decision.matched == ["high", "low"]
    assert decision.destinations == ["neuro", "archive"]


def test_an_exclusive_match_stops_the_evaluation():
    decision = evaluate(
        [rule("first", 200, [CT], ("neuro",), exclusive=True), rule("second", 100, [CT], ("archive",))], FACTS
    )
    assert decision.destinations == ["neuro"]
    assert decision.explanation[1] == {"rule": "second", "matched": False, "reason": "after exclusive first"}


def test_a_fallback_applies_only_when_nothing_else_matched():
    rules = [rule("mr only", 200, [MR], ("mr",)), rule("catch all", 0, [], ("archive",), fallback=True)]
    assert evaluate(rules, FACTS).destinations == ["archive"]
    mr_facts = {**FACTS, "modality": ["MR"]}
    decision = evaluate(rules, mr_facts)
    assert decision.destinations == ["mr"]
    assert decision.explanation[-1]["reason"] == "fallback: another rule matched"


def test_the_explanation_names_the_first_failed_criterion():
    decision = evaluate([rule("mr head", 100, [Criterion("body_part", "equals", "HEAD"), MR], ("mr",))], FACTS)
    assert decision.destinations == []
    assert decision.explanation == [
        {"rule": "mr head", "matched": False, "reason": "modality equals 'MR' failed (study has CT, SR)"}
    ]
