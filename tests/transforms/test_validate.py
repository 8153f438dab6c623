"""validate(): every mistake a profile can hold is named with its operation, and a good profile passes."""

import pytest

from apps.transforms.engine import OPTIONS, Operation, Profile, transform, validate


def errors_of(*operations: Operation, **profile) -> list[str]:
    return validate(Profile("p", operations=operations, **profile))


def test_a_sound_profile_has_no_errors():
    assert errors_of(
        Operation("prefix", "AccessionNumber", "SITE-"),
        Operation("set", "InstitutionName", "{InstitutionName} (via router)"),
        Operation("set", "(0008,0080)", "Hospital"),
        Operation("replace", "StudyDescription", r"\1", pattern=r"^(\w+).*"),
        Operation("remove", "RequestAttributesSequence[*].RequestedProcedureID"),
        Operation("remove_private", keep_creators=("SIEMENS CSA HEADER",)),
        Operation("date_shift"),
        Operation("date_shift", "StudyDate"),
        Operation("hash", "0010,0020"),
        deidentify=True,
        options=OPTIONS,
    ) == ["retain_longitudinal_full_dates and retain_longitudinal_modified_dates exclude each other"]


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        (Operation("set", "AccesionNumber", "x"), "unknown keyword 'AccesionNumber'"),
        (Operation("set", "(0008,005)", "x"), "'(0008,005)' is neither a keyword nor a tag"),
        (Operation("set", "(0008,0050", "x"), "unbalanced parentheses"),
        (Operation("replace", "StudyDescription", "x", pattern="(unclosed"), "bad regex"),
        (Operation("replace", "StudyDescription", r"\2", pattern="(a)"), "refers to group '2'"),
        (Operation("replace", "StudyDescription", "x"), "replace needs a pattern"),
        (Operation("set", "InstitutionName", "{InstitutionNam}-x"), "unknown keyword 'InstitutionNam'"),
        (Operation("set", "InstitutionName", "{InstitutionName!r}"), "a template field is a bare keyword"),
        (Operation("set", "InstitutionName", "{unclosed"), "template"),
        (Operation("frobnicate", "StudyID"), "unknown op"),
        (Operation("prefix", "Rows", "x"), "the attribute's VR is US"),
        (Operation("prefix", "AccessionNumber"), "prefix needs a value"),
        (Operation("date_shift", "StudyTime"), "the attribute's VR is TM"),
        (Operation("hash", "StudyDate"), "the attribute's VR is DA"),
        (Operation("set", "AccessionNumber", "X" * 17), "the new value is longer than SH allows"),
        (Operation("set", "Modality", "ct scan"), "the new value is not a valid CS value"),
        (Operation("set", "RequestAttributesSequence", "x"), "set cannot write a sequence"),
        (Operation("set", "StudyDate[*].AccessionNumber", "x"), "'StudyDate[*]' is not a sequence"),
        (Operation("set", "RequestAttributesSequence.AccessionNumber", "x"), "needs [*] or [n]"),
        (Operation("set", "AccessionNumber[0]", "x"), "an item index belongs to a sequence step"),
        (Operation("remove", "PixelData"), "copied as they are"),
        (Operation("set", "TransferSyntaxUID", "1.2"), "file meta"),
        (Operation("remove", ""), "no tag given"),
        (Operation("remove_private", "PatientName"), "remove_private takes no tag"),
        (Operation("remove", "PatientName", keep_creators=("X",)), "keep_creators belongs to remove_private"),
    ],
)
def test_each_mistake_is_named_with_its_operation(operation, expected):
    errors = errors_of(Operation("remove", "StudyID"), operation)
    assert len(errors) == 1
    assert errors[0].startswith(f"operation 2 ({operation.op} {operation.tag!r}): ")
    assert expected in errors[0]


def test_unknown_options_and_options_without_de_identification_are_errors():
    assert validate(Profile("p", deidentify=True, options=frozenset({"retain_everything"}))) == [
        "unknown option 'retain_everything'"
    ]
    assert validate(Profile("p", options=frozenset({"retain_uids"}))) == [
        "options apply to de-identification, which this profile does not do"
    ]


def test_a_pseudonym_table_without_de_identification_is_an_error():
    assert validate(Profile("p", pseudonyms={"A": "B"})) == [
        "a pseudonym table is used by de-identification, which this profile does not do"
    ]


def test_transform_refuses_an_invalid_profile_before_writing(tmp_path, ct):
    with pytest.raises(ValueError, match="unknown keyword"):
        transform(ct, tmp_path / "out.dcm", Profile("p", operations=(Operation("remove", "Nonsense"),)), b"")
    assert list(tmp_path.iterdir()) == []
