"""The Annex E data and the date arithmetic the engine relies on."""

import pytest
from pydicom.datadict import tag_for_keyword

from apps.transforms import annex_e
from apps.transforms.dates import shift_da, shift_dt


@pytest.mark.parametrize(
    ("keyword", "action"),
    [
        ("PatientName", "Z"),
        ("PatientID", "Z/D"),
        ("PatientBirthDate", "Z"),
        ("OtherPatientIDs", "X"),
        ("StudyInstanceUID", "U"),
        ("SOPInstanceUID", "U"),
        ("ReferencedImageSequence", "X/Z/U*"),
        ("InstitutionName", "X/Z/D"),
        ("Modality", None),
    ],
)
def test_the_basic_profile_table_gives_the_standards_action(keyword, action):
    assert annex_e.basic_action(tag_for_keyword(keyword)) == action


def test_repeating_groups_are_matched_by_mask():
    assert annex_e.basic_action(0x50020010) == "X"  # curve data (50xx,xxxx)
    assert annex_e.basic_action(0x60023000) == "X"  # overlay data (60xx,3000)
    assert annex_e.basic_action(0x60020010) is None  # overlay rows stay


@pytest.mark.parametrize(
    "name",
    [
        "DEVICE_KEEP",
        "DEVICE_CLEAN",
        "INSTITUTION_KEEP",
        "PATIENT_KEEP",
        "PATIENT_CLEAN",
        "DESCRIPTORS",
        "UID_SEQUENCES",
    ],
)
def test_every_attribute_an_option_names_is_in_the_basic_profile(name):
    """An option's attribute missing from the table would be kept anyway: a typo would go unnoticed."""
    assert [tag for tag in getattr(annex_e, name) if annex_e.basic_action(tag) is None] == []


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20240301", -1, "20240229"),
        ("2024.03.01", -1, "20240229"),
        ("20241301", -1, ""),
        ("", -1, ""),
    ],
)
def test_dates_shift_by_whole_days_and_unreadable_ones_are_emptied(value, days, expected):
    assert shift_da(value, days) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240301101500.5+0100", "20240229101500.5+0100"),
        ("202403", "202402"),
        ("2024", "2023"),
        ("garbage", ""),
    ],
)
def test_datetimes_shift_their_date_and_keep_their_precision(value, expected):
    assert shift_dt(value, -1) == expected
