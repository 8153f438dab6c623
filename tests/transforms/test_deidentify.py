"""De-identification: PS3.15 Annex E Basic Profile and options, consistent pseudonyms, and what is held."""

import datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from apps.transforms.annex_e import basic_action
from apps.transforms.engine import Held, Operation, Profile, date_offset_days, patient_pseudonym, transform
from apps.transforms.engine import uid_pseudonym as mapped

from ..support.dicom import shipped, synthetic_study
from .conftest import OTHER_SECRET, SECRET

RESEARCH = Profile("research", deidentify=True)
# Identifying attributes the fixture carries, and the UIDs it carries: none may leave as it came.
IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientIDsSequence", "PatientAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "InstitutionName", "InstitutionAddress",
    "StationName", "DeviceSerialNumber", "AccessionNumber", "StudyID", "StudyDescription", "SeriesDescription",
    "StudyDate", "SeriesDate", "AcquisitionDateTime", "RequestAttributesSequence", "PatientSex", "PatientAge",
)  # fmt: skip
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def deidentify(source: Path, tmp_path: Path, profile: Profile = RESEARCH, secret: bytes = SECRET, name="out.dcm"):
    target = tmp_path / name
    result = transform(source, target, profile, secret)
    return dcmread(target), result


def with_options(*options: str, **kwargs) -> Profile:
    return Profile("research", deidentify=True, options=frozenset(options), **kwargs)


def test_no_identifying_attribute_leaves_as_it_came(tmp_path, identified):
    source = dcmread(identified)
    ds, _ = deidentify(identified, tmp_path)
    for keyword in IDENTIFYING + UIDS:
        assert keyword not in ds or ds[keyword].value != source[keyword].value, keyword
    for keyword in ("PatientBirthDate", "ReferringPhysicianName", "StudyID", "StudyDate", "PatientSex"):
        assert ds.get(keyword, "") == "", keyword  # Z: emptied
    for keyword in ("OtherPatientIDs", "OtherPatientIDsSequence", "PatientAddress", "RequestAttributesSequence"):
        assert keyword not in ds, keyword  # X: removed
    assert not [element for element in ds if element.tag.is_private]
    for element in ds.iterall():
        assert "Doe" not in str(element.value) and "MRN-1234567" not in str(element.value), element.keyword


def test_every_attribute_left_is_one_the_basic_profile_keeps_or_one_we_wrote(tmp_path, identified):
    ds, _ = deidentify(identified, tmp_path)
    written = {"PatientName", "PatientID", "AccessionNumber", "PatientIdentityRemoved", "DeidentificationMethod"}
    written |= {"DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified"}
    for element in ds:
        action = basic_action(element.tag)
        assert action != "X", element.keyword
        if action in ("Z", "X/Z") and element.keyword not in written:
            assert element.value in (None, "", []), element.keyword


def test_uids_are_remapped_and_references_follow_them(tmp_path, study, identified):
    _, paths = study
    referenced = dcmread(paths[1])
    ds, _ = deidentify(identified, tmp_path)
    other, _ = deidentify(paths[1], tmp_path, name="other.dcm")
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert other.SOPInstanceUID == mapped(referenced.SOPInstanceUID, SECRET)
    assert ds.SOPClassUID == dcmread(identified).SOPClassUID  # class UIDs are not identifying
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_a_late_instance_gets_the_same_study_and_series_uids(tmp_path, study):
    study_uid, paths = study
    first, _ = deidentify(paths[0], tmp_path, name="first.dcm")
    late, _ = deidentify(paths[2], tmp_path, name="late.dcm")
    assert first.StudyInstanceUID == late.StudyInstanceUID == mapped(study_uid, SECRET)
    assert first.SeriesInstanceUID == late.SeriesInstanceUID
    assert first.SOPInstanceUID != late.SOPInstanceUID


def test_a_patient_gets_the_same_pseudonym_in_two_studies_and_another_with_another_secret(tmp_path):
    _, one = synthetic_study(tmp_path / "one", count=1, patient_name="Roe^Richard")
    _, two = synthetic_study(tmp_path / "two", count=1, patient_name="Roe^Richard")
    first, _ = deidentify(one[0], tmp_path, name="1.dcm")
    second, _ = deidentify(two[0], tmp_path, name="2.dcm")
    elsewhere, _ = deidentify(two[0], tmp_path, secret=OTHER_SECRET, name="3.dcm")
    patient_id = dcmread(one[0]).PatientID
    assert first.PatientID == second.PatientID == patient_pseudonym(patient_id, SECRET)
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert elsewhere.PatientID != second.PatientID
    assert elsewhere.StudyInstanceUID != second.StudyInstanceUID


def test_the_pseudonym_table_names_the_patient(tmp_path, identified):
    ds, _ = deidentify(identified, tmp_path, with_options(pseudonyms={"MRN-1234567": "STUDY-0042"}))
    assert ds.PatientID == "STUDY-0042"
    assert str(ds.PatientName) == "STUDY-0042"


def test_a_patient_missing_from_the_table_is_held_and_nothing_is_written(tmp_path, identified):
    with pytest.raises(Held) as held:
        deidentify(identified, tmp_path, with_options(pseudonyms={"MRN-OTHER": "STUDY-0001"}))
    assert held.value.reason == "no pseudonym for this patient in the profile's table"
    assert list(tmp_path.glob("*.dcm")) == [] and list(tmp_path.glob(".transform-*")) == []


def test_burned_in_annotation_yes_is_held(tmp_path, identified):
    ds = dcmread(identified)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "burned.dcm")
    with pytest.raises(Held, match="BurnedInAnnotation is YES"):
        deidentify(tmp_path / "burned.dcm", tmp_path)


@pytest.mark.parametrize(
    ("sop_class", "name"),
    [
        ("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.3.1", "Ultrasound Multi-frame Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage"),
    ],
)
def test_classes_known_for_burned_in_text_are_held_unless_allowed(tmp_path, identified, sop_class, name):
    ds = dcmread(identified)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.save_as(tmp_path / "us.dcm")
    with pytest.raises(Held) as held:
        deidentify(tmp_path / "us.dcm", tmp_path)
    assert held.value.reason == f"burned-in annotation likely: {name}, and the profile does not allow it"
    out, _ = deidentify(tmp_path / "us.dcm", tmp_path, with_options(allow_burned_in=True))
    assert out.PatientIdentityRemoved == "YES"


def test_a_shipped_secondary_capture_is_held(tmp_path):
    with pytest.raises(Held, match="Secondary Capture"):
        deidentify(shipped("jpeg2000"), tmp_path)


def test_coercion_only_profiles_do_not_hold_burned_in_images(tmp_path):
    site = Profile("site", operations=(Operation("remove", "StudyID"),))
    transform(shipped("jpeg2000"), tmp_path / "out.dcm", site, b"")
    assert (tmp_path / "out.dcm").exists()


def test_the_method_is_recorded_with_cid_7050_codes(tmp_path, identified):
    ds, _ = deidentify(identified, tmp_path, with_options("retain_uids", "retain_longitudinal_modified_dates"))
    assert ds.PatientIdentityRemoved == "YES"
    codes = [(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in ds.DeidentificationMethodCodeSequence]
    assert codes == [
        ("113100", "DCM", "Basic Application Confidentiality Profile"),
        ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"),
        ("113110", "DCM", "Retain UIDs Option"),
    ]
    assert list(ds.DeidentificationMethod) == [meaning for _, _, meaning in codes]
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_without_date_options_the_longitudinal_information_is_marked_removed(tmp_path, identified):
    ds, _ = deidentify(identified, tmp_path)
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]


def test_retain_uids_keeps_every_uid(tmp_path, identified):
    source = dcmread(identified)
    ds, _ = deidentify(identified, tmp_path, with_options("retain_uids"))
    for keyword in UIDS:
        assert ds[keyword].value == source[keyword].value
    assert ds.PatientName != source.PatientName


def test_modified_dates_are_shifted_by_the_patients_offset(tmp_path, identified):
    source = dcmread(identified)
    ds, _ = deidentify(identified, tmp_path, with_options("retain_longitudinal_modified_dates"))
    days = date_offset_days("MRN-1234567", SECRET)
    assert ds.StudyDate == (_date("20240601", days))
    assert ds.AcquisitionDateTime == _date("20240601", days) + "101500.123+0100"
    assert ds.StudyTime == source.StudyTime
    assert ds.PatientBirthDate == ""  # no option keeps the birth date


def test_a_date_written_with_an_unknown_vr_is_shifted_too(tmp_path, identified):
    ds = dcmread(identified)
    ds[0x00080021] = RawDataElement(Tag(0x00080021), "UN", 8, b"20240601", 0, False, True)  # SeriesDate
    source = tmp_path / "un.dcm"
    ds.save_as(source, enforce_file_format=True)
    shifted, _ = deidentify(source, tmp_path, with_options("retain_longitudinal_modified_dates"))
    assert shifted.SeriesDate == _date("20240601", date_offset_days("MRN-1234567", SECRET))


def test_full_dates_are_kept(tmp_path, identified):
    ds, _ = deidentify(identified, tmp_path, with_options("retain_longitudinal_full_dates"))
    assert (ds.StudyDate, ds.SeriesDate) == ("20240601", "20240601")
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"


def _date(yyyymmdd: str, days: int) -> str:
    date = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:])) + datetime.timedelta(days)
    return date.strftime("%Y%m%d")


def test_retain_institution_device_and_patient_characteristics(tmp_path, identified):
    options = ("retain_institution_identity", "retain_device_identity", "retain_patient_characteristics")
    ds, _ = deidentify(identified, tmp_path, with_options(*options))
    assert (ds.InstitutionName, ds.InstitutionAddress) == ("Princeton Plainsboro", "Princeton NJ")
    assert (ds.StationName, ds.DeviceSerialNumber) == ("CT01", "SN-778")
    assert (ds.PatientSex, ds.PatientAge) == ("F", "063Y")
    assert ds.get("PatientBirthDate", "") == "" and "PatientAddress" not in ds


def test_without_retain_options_those_attributes_go(tmp_path, identified):
    ds, _ = deidentify(identified, tmp_path)
    assert ds.get("InstitutionName") != "Princeton Plainsboro"
    assert ds.get("StationName") != "CT01"
    assert ds.get("PatientSex", "") == ""


def test_clean_descriptors_keeps_descriptions_without_the_patients_name(tmp_path, identified):
    ds, _ = deidentify(identified, tmp_path, with_options("clean_descriptors"))
    assert ds.SeriesDescription == "Axial 5mm"
    assert ds.StudyDescription == "CT HEAD"


def test_operations_run_after_de_identification_and_see_its_values(tmp_path, identified):
    profile = with_options(operations=(Operation("set", "ClinicalTrialSubjectID", "{PatientID}"),))
    ds, _ = deidentify(identified, tmp_path, profile)
    assert ds.ClinicalTrialSubjectID == patient_pseudonym("MRN-1234567", SECRET)


def test_held_reasons_carry_no_patient_data(tmp_path, identified):
    ds = dcmread(identified)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "burned.dcm")
    reasons = []
    for source, profile in ((identified, with_options(pseudonyms={})), (tmp_path / "burned.dcm", with_options())):
        with pytest.raises(Held) as held:
            deidentify(source, tmp_path, profile)
        reasons.append(held.value.reason)
    assert reasons[0] != reasons[1]
    for reason in reasons:
        for value in ("Doe", "Jane", "MRN", "1961", "Princeton"):
            assert value not in reason
