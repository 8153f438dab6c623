"""Each coercion operation, checked on the file the engine writes."""

import datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from apps.transforms.engine import Held, Operation, Profile, date_offset_days, transform, uid_pseudonym

from .conftest import SECRET


def coerce(source: Path, tmp_path: Path, *operations: Operation):
    target = tmp_path / "out.dcm"
    result = transform(source, target, Profile("coercion", operations=operations), SECRET, changes=True)
    return dcmread(target), result


def test_a_site_prefix_and_a_fixed_institution(tmp_path, identified):
    ds, result = coerce(
        identified,
        tmp_path,
        Operation("prefix", "AccessionNumber", "NE-"),
        Operation("set", "InstitutionName", "North East Imaging"),
    )
    assert ds.AccessionNumber == "NE-A-20240601-7"
    assert ds.InstitutionName == "North East Imaging"
    assert {(c.keyword, c.before, c.after) for c in result.changes} == {
        ("AccessionNumber", "A-20240601-7", "NE-A-20240601-7"),
        ("InstitutionName", "Princeton Plainsboro", "North East Imaging"),
    }


def test_a_template_reads_other_attributes_of_the_instance(tmp_path, identified):
    ds, _ = coerce(identified, tmp_path, Operation("set", "StudyDescription", "{StationName}/{AccessionNumber}"))
    assert ds.StudyDescription == "CT01/A-20240601-7"


def test_a_template_naming_an_absent_attribute_fills_in_nothing(tmp_path, identified):
    ds, _ = coerce(identified, tmp_path, Operation("set", "StudyDescription", "[{AdmittingDiagnosesDescription}]"))
    assert ds.StudyDescription == "[]"


def test_set_creates_an_absent_attribute(tmp_path, ct):
    ds, result = coerce(ct, tmp_path, Operation("set", "ClinicalTrialSiteID", "SITE-7"))
    assert ds.ClinicalTrialSiteID == "SITE-7"
    assert [(c.tag, c.before, c.after) for c in result.changes] == [("(0012,0030)", None, "SITE-7")]


def test_suffix_and_replace(tmp_path, identified):
    ds, _ = coerce(
        identified,
        tmp_path,
        Operation("suffix", "StudyID", "-B"),
        Operation("replace", "AccessionNumber", r"\1\2", pattern=r"^A-(\d{8})-(\d+)$"),
    )
    assert ds.StudyID == "S-4711-B"
    assert ds.AccessionNumber == "202406017"


def test_remove_takes_an_attribute_or_a_whole_sequence(tmp_path, identified):
    ds, _ = coerce(identified, tmp_path, Operation("remove", "OtherPatientIDs"), Operation("remove", "(0040,0275)"))
    assert "OtherPatientIDs" not in ds
    assert "RequestAttributesSequence" not in ds


def test_operations_reach_into_every_item_of_a_sequence(tmp_path, identified):
    ds, result = coerce(
        identified,
        tmp_path,
        Operation("prefix", "RequestAttributesSequence[*].AccessionNumber", "NE-"),
        Operation("remove", "OtherPatientIDsSequence[0].IssuerOfPatientID"),
    )
    assert ds.RequestAttributesSequence[0].AccessionNumber == "NE-A-20240601-7"
    assert ds.AccessionNumber == "A-20240601-7"
    assert "IssuerOfPatientID" not in ds.OtherPatientIDsSequence[0]
    assert {c.keyword for c in result.changes} == {
        "RequestAttributesSequence[0].AccessionNumber",
        "OtherPatientIDsSequence[0].IssuerOfPatientID",
    }


def test_a_template_in_a_sequence_item_reads_the_item_first(tmp_path, identified):
    ds, _ = coerce(
        identified, tmp_path, Operation("set", "RequestAttributesSequence[*].AccessionNumber", "{RequestedProcedureID}")
    )
    assert ds.RequestAttributesSequence[0].AccessionNumber == "RP-1"


def test_remove_private_keeps_only_the_listed_creators(tmp_path, ct):
    ds, _ = coerce(ct, tmp_path, Operation("remove_private", keep_creators=("GEMS_IDEN_01",)))
    creators = {str(e.value) for e in ds if e.tag.is_private and e.tag.element <= 0xFF}
    assert creators == {"GEMS_IDEN_01"}
    assert ds[0x00091001].value == "GE_GENESIS_FF"
    assert not [e for e in ds if e.tag.is_private and e.tag.group != 0x0009]


def test_date_shift_moves_every_date_by_the_patients_offset_and_keeps_times(tmp_path, identified):
    ds, _ = coerce(identified, tmp_path, Operation("date_shift"))
    days = date_offset_days("MRN-1234567", SECRET)
    source = dcmread(identified)
    assert ds.StudyDate == _shift("20240601", days)
    assert ds.PatientBirthDate == _shift("19610214", days)
    assert ds.AcquisitionDateTime == _shift("20240601", days) + "101500.123+0100"
    assert ds.StudyTime == source.StudyTime


def test_date_shift_on_one_attribute_leaves_the_others(tmp_path, identified):
    ds, _ = coerce(identified, tmp_path, Operation("date_shift", "StudyDate"))
    assert ds.StudyDate == _shift("20240601", date_offset_days("MRN-1234567", SECRET))
    assert ds.SeriesDate == "20240601"


def _shift(yyyymmdd: str, days: int) -> str:
    date = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:])) + datetime.timedelta(days)
    return date.strftime("%Y%m%d")


def test_hash_is_keyed_and_fits_the_vr(tmp_path, identified):
    ds, _ = coerce(identified, tmp_path, Operation("hash", "AccessionNumber"), Operation("hash", "PatientID"))
    assert len(ds.AccessionNumber) == 16  # SH
    assert len(ds.PatientID) == 64  # LO
    assert ds.AccessionNumber not in ("A-20240601-7", "")
    again, _ = coerce(identified, tmp_path, Operation("hash", "AccessionNumber"))
    assert again.AccessionNumber == ds.AccessionNumber


def test_hash_of_a_uid_is_a_uid(tmp_path, identified):
    source = dcmread(identified)
    ds, _ = coerce(identified, tmp_path, Operation("hash", "StudyInstanceUID"))
    assert ds.StudyInstanceUID == uid_pseudonym(source.StudyInstanceUID, SECRET)


def test_changing_the_sop_instance_uid_updates_the_file_meta(tmp_path, identified):
    ds, _ = coerce(identified, tmp_path, Operation("hash", "SOPInstanceUID"))
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPInstanceUID != dcmread(identified).SOPInstanceUID


def test_a_value_too_long_for_its_vr_holds_instead_of_sending_it_cut(tmp_path, identified):
    with pytest.raises(Held) as held:
        coerce(identified, tmp_path, Operation("set", "AccessionNumber", "{InstitutionName}-{AccessionNumber}"))
    assert held.value.reason == "operation 1 (set 'AccessionNumber'): the new value is longer than SH allows"
    assert "Princeton" not in held.value.reason
    assert not (tmp_path / "out.dcm").exists()


def test_operations_run_in_order(tmp_path, identified):
    ds, _ = coerce(
        identified,
        tmp_path,
        Operation("set", "StudyID", "A"),
        Operation("suffix", "StudyID", "B"),
        Operation("prefix", "StudyID", "C"),
    )
    assert ds.StudyID == "CAB"
