from datetime import UTC, datetime, time

import pytest

from apps.routing.rules import Criterion, Engine, Rule, Window, criterion_matches, evaluate

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


# --- Criteria added for the full engine ----------------------------------------------------------

SR = "1.2.840.10008.5.1.4.1.1.88.11"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("criterion", "expected"),
    [
        (Criterion("sop_class", "in", f"{CT_IMAGE},1.2.3"), True),  # allow list
        (Criterion("sop_class", "not_in", SR), False),  # deny list: the study holds an SR
        (Criterion("sop_class", "not_in", "1.2.3"), True),
        (Criterion("keyword", "equals", "F", keyword="PatientSex"), True),
        (Criterion("keyword", "present", keyword="PatientSex"), True),
        (Criterion("keyword", "absent", keyword="PatientWeight"), True),
        (Criterion("keyword", "regex", r"^\d+Y$", keyword="PatientAge"), True),
    ],
)
def test_sop_class_lists_and_dicom_keywords(criterion, expected):
    facts = {**FACTS, "sop_class": [CT_IMAGE, SR], "keyword:PatientSex": "F", "keyword:PatientAge": "045Y"}
    assert criterion_matches(criterion, facts) is expected
    assert Engine([rule("r", 1, [criterion])]).evaluate(facts).matched == (["r"] if expected else [])


NIGHTS_NY = Window(frozenset(range(5)), time(19), time(7), "America/New_York")


@pytest.mark.parametrize(
    ("moment", "applies"),
    [
        ("2026-11-23T23:30:00", False),  # Monday 18:30 in New York
        ("2026-11-24T00:30:00", True),  # Monday 19:30
        ("2026-11-24T11:59:00", True),  # Tuesday 06:59, the night shift still open
        ("2026-11-24T12:00:00", False),
        ("2026-11-01T11:30:00", False),  # Sunday 06:30 after the fall-back: Saturday is not a window day
        ("2026-03-10T10:30:00", True),  # Tuesday 06:30 EDT, after the spring-forward
        ("2026-03-10T11:30:00", False),  # 07:30 EDT
    ],
)
def test_a_rule_window_across_midnight_in_its_own_timezone_and_across_dst(moment, applies):
    at = datetime.fromisoformat(moment).replace(tzinfo=UTC)
    night = Rule(1, "night", 10, (CT,), ("night-pacs",), windows=(NIGHTS_NY,))
    day = rule("day", 5, [CT], ("day-pacs",), fallback=True)
    decision = Engine([night, day]).evaluate(FACTS, at=at)
    assert decision.destinations == (["night-pacs"] if applies else ["day-pacs"])
    if not applies:
        assert decision.explanation[0]["reason"] == "outside its time window"


def test_the_compiled_engine_agrees_with_the_reference_on_random_rules_and_studies():
    import random

    rng = random.Random(7)
    attributes = {
        "modality": ["CT", "MR", "US", "CR"],
        "body_part": ["HEAD", "CHEST", "KNEE", ""],
        "study_description": ["CT HEAD", "MR KNEE LEFT", "", "Chest PA"],
        "priority": ["STAT", "URGENT", "ROUTINE"],
    }
    operators = ["equals", "contains", "regex", "in", "not_in", "present", "absent"]

    def random_criterion():
        attribute = rng.choice(list(attributes))
        value = ",".join(rng.sample([v for v in attributes[attribute] if v] or ["X"], 2))
        operator = rng.choice(operators)
        return Criterion(
            attribute, operator, value.split(",")[0] if operator in ("equals", "contains", "regex") else value
        )

    rules = [
        Rule(
            i,
            f"r{i}",
            rng.randint(0, 50),
            tuple(random_criterion() for _ in range(rng.randint(0, 3))),
            (f"d{i % 7}",),
            exclusive=rng.random() < 0.1,
            fallback=rng.random() < 0.05,
        )
        for i in range(60)
    ]
    engine = Engine(rules)
    for _ in range(300):
        facts = {a: rng.choice(v) for a, v in attributes.items()}
        facts["modality"] = [facts["modality"]]
        reference = evaluate_by_reference(rules, facts)
        assert engine.evaluate(facts).matched == reference


def evaluate_by_reference(rules, facts) -> list[str]:
    """The documented semantics, spelled out with criterion_matches."""
    matched = []
    for r in sorted((r for r in rules if not r.fallback), key=lambda r: (-r.priority, r.name)):
        if all(criterion_matches(c, facts) for c in r.criteria):
            matched.append(r.name)
            if r.exclusive:
                break
    if not matched:
        for r in sorted((r for r in rules if r.fallback), key=lambda r: (-r.priority, r.name)):
            if all(criterion_matches(c, facts) for c in r.criteria):
                matched.append(r.name)
    return matched
