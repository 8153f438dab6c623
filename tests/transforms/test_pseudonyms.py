"""Keyed pseudonyms: deterministic with one secret, different with another, valid where DICOM puts them."""

import subprocess
import sys

import pytest
from pydicom import config
from pydicom.valuerep import validate_value

from apps.transforms.engine import date_offset_days, patient_pseudonym, uid_pseudonym

from .conftest import OTHER_SECRET, SECRET

UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def test_a_uid_maps_to_the_same_valid_uid_every_time():
    new = uid_pseudonym(UID, SECRET)
    assert new == uid_pseudonym(UID, SECRET)
    assert new.startswith("2.25.") and len(new) <= 44
    validate_value("UI", new, config.RAISE)


def test_another_secret_gives_another_uid_and_another_patient_pseudonym():
    assert uid_pseudonym(UID, SECRET) != uid_pseudonym(UID, OTHER_SECRET)
    assert patient_pseudonym("MRN-1", SECRET) != patient_pseudonym("MRN-1", OTHER_SECRET)


def test_different_uids_map_to_different_uids():
    assert len({uid_pseudonym(f"{UID}.{n}", SECRET) for n in range(1000)}) == 1000


def test_the_uid_mapping_is_the_same_in_another_process():
    code = f"from apps.transforms.engine import uid_pseudonym; print(uid_pseudonym({UID!r}, {SECRET!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == uid_pseudonym(UID, SECRET)


def test_a_patient_pseudonym_is_a_valid_patient_id_and_stable():
    pseudonym = patient_pseudonym("MRN-1234567", SECRET)
    assert pseudonym == patient_pseudonym("MRN-1234567", SECRET)
    assert pseudonym != patient_pseudonym("MRN-1234568", SECRET)
    assert "1234567" not in pseudonym
    validate_value("LO", pseudonym, config.RAISE)


def test_the_date_offset_is_per_patient_never_zero_and_stable():
    offsets = [date_offset_days(f"MRN-{n}", SECRET) for n in range(500)]
    assert 0 not in offsets
    assert all(-3650 <= offset < 0 for offset in offsets)
    assert len(set(offsets)) > 400
    assert date_offset_days("MRN-7", SECRET) == date_offset_days("MRN-7", SECRET)


@pytest.mark.parametrize("secret", [b"", b"short", "a text secret of enough length"])
def test_a_missing_short_or_text_secret_is_refused(secret):
    with pytest.raises(ValueError, match="secret"):
        uid_pseudonym(UID, secret)
