import pytest

from apps.studies.classify import (
    MappingRule,
    classify,
    match_specialty,
    normalise_priority,
    priority_from,
    workload_for,
)
from apps.studies.defaults import DEFAULT_PRIORITY_KEYWORDS, DEFAULT_SPECIALTY_MAPPING, DEFAULT_WORKLOAD_WEIGHTS

DEFAULT_RULES = [
    MappingRule(
        id=row["order"],
        modality=row["modality"],
        body_parts=tuple(p for p in row["body_parts"].split(",") if p),
        specialty=row["specialty"],
    )
    for row in DEFAULT_SPECIALTY_MAPPING
]


@pytest.mark.parametrize(
    ("modalities", "body_part", "specialty"),
    [
        (["CT"], "HEAD", "neuroradiology"),
        (["MR"], "BRAIN", "neuroradiology"),
        (["MR"], "CSPINE", "neuroradiology"),
        (["CT"], "NECK", "neuroradiology"),
        (["CR"], "KNEE", "musculoskeletal"),
        (["MR"], "SHOULDER", "musculoskeletal"),
        (["DX"], "HIP", "musculoskeletal"),
        (["CR"], "EXTREMITY", "musculoskeletal"),
        (["CT"], "CHEST", "cardiothoracic"),
        (["MR"], "HEART", "cardiothoracic"),
        (["CT"], "ABDOMEN", "body_imaging"),
        (["MR"], "PELVIS", "body_imaging"),
        (["MG"], "", "breast_imaging"),
        (["MG"], "CHEST", "breast_imaging"),
        (["MR"], "BREAST", "breast_imaging"),
        (["US"], "THYROID", "general_radiology"),
        (["CT"], "", "general_radiology"),
        (["CT", "SR"], "head", "neuroradiology"),
    ],
)
def test_it_maps_modality_and_body_part_to_the_classic_specialties(modalities, body_part, specialty):
    assert match_specialty(modalities=modalities, body_part=body_part, rules=DEFAULT_RULES)[0] == specialty


def test_it_says_when_the_default_was_used():
    specialty, _, reason = match_specialty(modalities=["US"], body_part="", rules=DEFAULT_RULES)
    assert specialty == "general_radiology"
    assert reason.startswith("default")


def test_the_first_matching_rule_wins():
    rules = [
        MappingRule(id=1, modality="CT", body_parts=("HEAD",), specialty="emergency_neuro"),
        *DEFAULT_RULES,
    ]
    assert match_specialty(modalities=["CT"], body_part="HEAD", rules=rules)[0] == "emergency_neuro"
    assert match_specialty(modalities=["MR"], body_part="HEAD", rules=rules)[0] == "neuroradiology"


@pytest.mark.parametrize(
    ("raw", "priority"),
    [
        ("STAT", "STAT"),
        ("stat", "STAT"),
        ("EMERGENCY", "STAT"),
        ("HIGH", "URGENT"),
        ("URGENT", "URGENT"),
        ("ASAP", "URGENT"),
        ("ROUTINE", "ROUTINE"),
        ("MEDIUM", "ROUTINE"),
        ("LOW", "ROUTINE"),
        ("", "ROUTINE"),
        ("WHENEVER", "ROUTINE"),
    ],
)
def test_it_normalises_the_requested_priority(raw, priority):
    assert normalise_priority(raw)[0] == priority


def test_an_unknown_priority_is_recorded_as_a_default():
    assert "default" in normalise_priority("WHENEVER")[1]
    result = classify(modalities=["CT"], body_part="HEAD", descriptions=[], priority_attributes={}, rules=DEFAULT_RULES)
    assert (result.priority, result.reasons["priority"]) == ("ROUTINE", "default: no priority given")
    unknown = priority_from(attributes={"RequestedProcedurePriority": "WHENEVER"}, descriptions=[], keywords=[])
    assert unknown == ("ROUTINE", "default: unknown RequestedProcedurePriority 'WHENEVER'")


KEYWORDS = [(row["keyword"], row["priority"]) for row in DEFAULT_PRIORITY_KEYWORDS]


@pytest.mark.parametrize(
    ("attributes", "descriptions", "priority"),
    [
        ({"RequestedProcedurePriority": "ROUTINE"}, ["CT HEAD CODE STROKE"], "STAT"),
        ({}, ["Trauma series"], "STAT"),
        ({}, ["STAT CT HEAD"], "STAT"),
        ({}, ["STATUS POST SURGERY"], "ROUTINE"),  # whole words only
        ({"StudyPriorityID": "HIGH"}, [], "URGENT"),
        ({"StudyPriorityID": "MED", "RequestedProcedurePriority": "STAT"}, [], "STAT"),  # the highest wins
        ({}, ["urgent follow-up"], "URGENT"),
        ({}, ["routine knee"], "ROUTINE"),
    ],
)
def test_priority_comes_from_every_priority_attribute_and_the_description_keywords(attributes, descriptions, priority):
    assert priority_from(attributes=attributes, descriptions=descriptions, keywords=KEYWORDS)[0] == priority


def test_a_description_pattern_and_a_subspecialty_refine_the_mapping():
    rules = [
        MappingRule(
            id=1,
            modality="MR",
            body_parts=("HEAD",),
            specialty="neuroradiology",
            description_pattern=r"\bIAC\b|inner ear",
            subspecialty="head_and_neck",
        ),
        *DEFAULT_RULES,
    ]
    assert match_specialty(modalities=["MR"], body_part="HEAD", rules=rules, descriptions=["MR IAC w/o"])[:2] == (
        "neuroradiology",
        "head_and_neck",
    )
    assert match_specialty(modalities=["MR"], body_part="HEAD", rules=rules, descriptions=["MR BRAIN"])[:2] == (
        "neuroradiology",
        "",
    )


WEIGHTS = {(row["modality"], row["body_part"]): row["weight"] for row in DEFAULT_WORKLOAD_WEIGHTS}


@pytest.mark.parametrize(
    ("modality", "body_part", "weight", "reason"),
    [
        ("CT", "CHEST", 1.2, "weight for CT CHEST"),
        ("CT", "KNEE", 1.0, "weight for CT"),
        ("CR", "CHEST", 0.3, "weight for CR"),
        ("XA", "HEART", 1.0, "default: no weight for XA"),
    ],
)
def test_workload_weights_prefer_the_most_specific_row(modality, body_part, weight, reason):
    assert workload_for(modality=modality, body_part=body_part, weights=WEIGHTS) == (weight, reason)
