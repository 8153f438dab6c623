import pytest

from apps.studies.classify import MappingRule, classify, match_specialty, normalise_priority
from apps.studies.defaults import DEFAULT_SPECIALTY_MAPPING

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
    specialty, reason = match_specialty(modalities=["US"], body_part="", rules=DEFAULT_RULES)
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
    result = classify(modalities=["CT"], body_part="HEAD", requested_priority="", rules=DEFAULT_RULES)
    assert result.reasons["priority"] == "default: no requested priority"
