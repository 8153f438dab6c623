from datetime import date

from apps.studies.qc import run_header_checks

TODAY = date(2026, 11, 21)


def header(**overrides):
    base = {
        "PatientID": "P1",
        "PatientName": "Doe^Jane",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "SOPInstanceUID": "1.2.3.4.5",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "Modality": "CT",
    }
    return {**base, **overrides}


def by_name(checks):
    return {c["check"]: c for c in checks}


def test_a_complete_single_patient_study_passes():
    checks = by_name(run_header_checks([header(), header(SOPInstanceUID="1.2.3.4.6")], today=TODAY))
    assert checks["required_attributes"]["passed"]
    assert checks["one_patient"]["passed"]


def test_it_flags_missing_required_attributes_with_counts():
    checks = by_name(run_header_checks([header(PatientID=""), header(Modality="", PatientID="")], today=TODAY))
    assert not checks["required_attributes"]["passed"]
    assert checks["required_attributes"]["detail"] == "Modality missing in 1, PatientID missing in 2"


def test_it_flags_two_patients_without_naming_them():
    checks = by_name(run_header_checks([header(), header(PatientID="P2", PatientName="Roe^Richard")], today=TODAY))
    assert not checks["one_patient"]["passed"]
    assert "Doe" not in checks["one_patient"]["detail"] and "Roe" not in checks["one_patient"]["detail"]


def test_an_implausible_study_date_is_flagged():
    checks = by_name(run_header_checks([header(StudyDate="20261125"), header(StudyDate="18991231")], today=TODAY))
    assert checks["plausible_study_date"]["detail"] == "18991231, 20261125"
    assert by_name(run_header_checks([header(StudyDate="20261122")], today=TODAY))["plausible_study_date"]["passed"]


def test_a_series_mixing_modalities_is_flagged():
    checks = by_name(run_header_checks([header(), header(Modality="MR", SOPInstanceUID="9")], today=TODAY))
    assert checks["series_modality"]["detail"] == "1 series mix modalities"


def test_a_later_copy_with_different_content_is_flagged():
    checks = by_name(run_header_checks([header()], today=TODAY, conflicting_copies=2))
    assert checks["same_uid_different_content"]["detail"] == "2 later copies differed"
