"""The query engine: matching as PS3.4 C.2.2.2 says, one key at a time (pure), then over rows in the database."""

import pytest
from django.db.models import Q
from pydicom.dataset import Dataset

from apps.archive import query as q
from apps.archive.dimse import find_response, query_from_identifier
from apps.studies.models import FileState, Instance, ReceivedInstance, Series, Study
from apps.studies.services import received_instance_register

A = q.ATTRIBUTES


def c(keyword: str, value: str, **kwargs) -> Q | None:
    return q.condition(A[keyword], value, path="", **kwargs)


# -- one key, one condition (pure) ------------------------------------------------------------------


def test_an_empty_value_or_a_lone_star_matches_everything():
    assert c("PatientID", "") is None
    assert c("PatientName", "*") is None
    assert c("StudyDate", "") is None


def test_a_single_value_matches_exactly_and_sql_wildcards_in_it_are_literal():
    assert c("PatientID", "A%B_C") == Q(patient_id__exact="A%B_C")


def test_a_trailing_star_is_a_prefix_which_the_database_escapes():
    assert c("PatientName", "DOE^*") == Q(patient_name__startswith="DOE^")
    assert c("AccessionNumber", "10%*") == Q(accession_number__startswith="10%")


def test_other_wildcards_are_an_anchored_pattern_with_everything_else_escaped():
    assert c("PatientName", "D?E*J%") == Q(patient_name__regex=r"^D.E.*J%$")
    assert c("StudyDescription", "*.CT*") == Q(study_description__regex=r"^.*\.CT.*$")


def test_person_names_ignore_case_only_when_configured():
    assert c("PatientName", "doe^jane") == Q(patient_name__exact="doe^jane")
    assert c("PatientName", "doe^jane", fold_person_names=True) == Q(patient_name__iexact="doe^jane")
    assert c("PatientName", "doe*", fold_person_names=True) == Q(patient_name__istartswith="doe")
    # Only person names: an ID is matched as it is, whatever the setting.
    assert c("PatientID", "abc", fold_person_names=True) == Q(patient_id__exact="abc")


def test_a_uid_list_matches_any_of_its_uids():
    assert c("StudyInstanceUID", "1.2.3") == Q(study_instance_uid="1.2.3")
    assert c("StudyInstanceUID", "1.2.3\\1.2.4") == Q(study_instance_uid__in=["1.2.3", "1.2.4"])


def test_date_ranges_are_inclusive_and_open_ended_and_exclude_empty_dates():
    assert c("StudyDate", "20240101") == Q(study_date="20240101")
    assert c("StudyDate", "20240101-20240131") == Q(study_date__gte="20240101") & Q(study_date__lte="20240131") & ~Q(
        study_date=""
    )
    assert c("StudyDate", "-20240131") == Q(study_date__lte="20240131") & ~Q(study_date="")
    assert c("StudyDate", "20240101-") == Q(study_date__gte="20240101") & ~Q(study_date="")


def test_a_time_range_bound_covers_its_whole_unit():
    assert c("StudyTime", "0930-10") == Q(study_time__gte="093000") & Q(study_time__lte="105959.999999") & ~Q(
        study_time=""
    )
    assert c("StudyTime", "-1030") == Q(study_time__lte="103059.999999") & ~Q(study_time="")
    assert c("StudyTime", "0930") == Q(study_time="093000")


@pytest.mark.parametrize("value", ["2024-01", "2024013", "x-20240101", "-", "20241301x"])
def test_a_malformed_date_is_refused_as_not_matching_the_sop_class(value):
    with pytest.raises(q.QueryError) as caught:
        c("StudyDate", value)
    assert caught.value.status == q.IDENTIFIER_DOES_NOT_MATCH


def test_a_level_the_model_does_not_have_is_refused():
    with pytest.raises(q.QueryError, match="PATIENT is not one of STUDY"):
        q.query_make(level="PATIENT", model=q.STUDY_ROOT)
    with pytest.raises(q.QueryError):
        q.query_make(level="", model=q.PATIENT_ROOT)
    assert q.query_make(level="patient", model=q.PATIENT_ROOT).level == q.PATIENT


def test_a_bad_value_fails_when_the_query_is_made_before_any_row_is_read():
    with pytest.raises(q.QueryError, match="not YYYYMMDD"):
        q.query_make(level="STUDY", keys=[("StudyDate", "yesterday")])


def test_keys_below_the_level_do_not_match_and_unique_keys_above_are_returned():
    query = q.query_make(level="SERIES", keys=[("StudyInstanceUID", "1.2"), ("SOPInstanceUID", "9.9")])
    assert [a.keyword for a, _ in query.matching()] == ["StudyInstanceUID"]
    assert query.returned()[:2] == ["StudyInstanceUID", "SeriesInstanceUID"]
    patient_root = q.query_make(level="STUDY", model=q.PATIENT_ROOT)
    assert patient_root.returned() == ["PatientID", "StudyInstanceUID"]


# -- the DIMSE identifier and response ---------------------------------------------------------------


def identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_an_identifier_becomes_a_query_with_every_key_as_text():
    ds = identifier("STUDY", PatientName="DOE*", StudyInstanceUID=["1.2", "1.3"], ReferencedStudySequence=[])
    ds.add_new(0x00091010, "LO", "private")
    query = query_from_identifier(ds, model=q.STUDY_ROOT)
    assert query.level == q.STUDY
    assert dict(query.keys) == {"PatientName": "DOE*", "StudyInstanceUID": "1.2\\1.3", "ReferencedStudySequence": ""}


def test_a_response_has_what_was_asked_empty_where_the_router_holds_nothing_and_says_its_character_set():
    ds = identifier("STUDY", PatientName="", OtherPatientIDs="", RetrieveAETitle="", StudyInstanceUID="")
    query = query_from_identifier(ds, model=q.STUDY_ROOT)
    row = {"PatientName": "Müller^Jürgen", "StudyInstanceUID": "1.2.3"}
    out = find_response(ds, query, row, ae_title="ROUTER")
    assert out.QueryRetrieveLevel == "STUDY"
    assert out.PatientName == "Müller^Jürgen"
    assert out.OtherPatientIDs in ("", None)
    assert out.RetrieveAETitle == "ROUTER"
    assert out.SpecificCharacterSet == "ISO_IR 192"
    ascii_only = find_response(ds, query, {"PatientName": "DOE", "StudyInstanceUID": "1"}, ae_title="ROUTER")
    assert "SpecificCharacterSet" not in ascii_only


# -- over rows --------------------------------------------------------------------------------------


def held(study_uid: str, *, series: list[tuple[str, str, int]], purged: bool = False, **fields) -> Study:
    """A study with rows only (no files): `series` as (uid, modality, instances)."""
    study = Study.objects.create(study_instance_uid=study_uid, **fields)
    for series_uid, modality, count in series:
        s = Series.objects.create(study=study, series_instance_uid=series_uid, modality=modality)
        for n in range(count):
            uid = f"{series_uid}.{n + 1}"
            received_instance_register(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid=study_uid,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"instances/{uid}.dcm",
                size=1,
                calling_ae_title="MODALITY",
                called_ae_title="ROUTER",
                peer_address="127.0.0.1",
            )
            received = ReceivedInstance.objects.get(sop_instance_uid=uid)
            Instance.objects.create(
                study=study,
                series=s,
                received=received,
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                instance_number=str(n + 1),
                path=f"instances/{uid}.dcm",
                size=1,
                sha256="0" * 64,
                file_state=FileState.PURGED if purged else FileState.STORED,
            )
    return study


@pytest.fixture
def studies(db):
    held(
        "1.1",
        series=[("1.1.1", "CT", 3), ("1.1.2", "SR", 1)],
        patient_id="P1",
        patient_name="Doe^Jane",
        patient_sex="F",
        study_date="20240105",
        study_time="093000",
        accession_number="A%1",
        modalities="CT\\SR",
    )
    held(
        "1.2",
        series=[("1.2.1", "MR", 2)],
        patient_id="P1",
        patient_name="Doe^Jane",
        study_date="20240220",
        study_time="143000",
        accession_number="A21",
        modalities="MR",
    )
    held(
        "1.3",
        series=[("1.3.1", "CT", 1)],
        patient_id="P2",
        patient_name="DOE^JOHN",
        study_date="20231231",
        accession_number="AB1",
        modalities="CT",
    )
    held("1.4", series=[("1.4.1", "CT", 2)], purged=True, patient_id="P3", patient_name="Gone^Ann")


def uids(query: q.Query, **kwargs) -> list[str]:
    unique = q.UNIQUE_KEYS[query.level]
    return sorted(row[unique] for row in q.search(query, limit=100, **kwargs).rows)


def study_query(**keys) -> q.Query:
    return q.query_make(level="STUDY", keys=list(keys.items()))


def test_a_universal_query_finds_every_held_study_and_never_a_purged_one(studies):
    assert uids(study_query()) == ["1.1", "1.2", "1.3"]


def test_an_indexed_key_a_wildcard_and_a_literal_percent(studies):
    assert uids(study_query(PatientID="P1")) == ["1.1", "1.2"]
    assert uids(study_query(PatientName="Doe*")) == ["1.1", "1.2"]
    assert uids(study_query(PatientName="D??^J*")) == ["1.1", "1.2", "1.3"]
    assert uids(study_query(PatientName="D?E^J*")) == ["1.3"]  # case counts: Doe is not DOE
    assert uids(study_query(AccessionNumber="A%1")) == ["1.1"]  # not A21: % is no wildcard here
    assert uids(study_query(AccessionNumber="A_1")) == []
    assert uids(study_query(AccessionNumber="A%*")) == ["1.1"]


def test_person_names_fold_case_where_configured(studies):
    assert uids(study_query(PatientName="doe^j*")) == []
    assert uids(study_query(PatientName="doe^j*"), fold_person_names=True) == ["1.1", "1.2", "1.3"]


def test_date_and_time_ranges(studies):
    assert uids(study_query(StudyDate="20240101-20240131")) == ["1.1"]
    assert uids(study_query(StudyDate="20240101-")) == ["1.1", "1.2"]
    assert uids(study_query(StudyDate="-20231231")) == ["1.3"]
    assert uids(study_query(StudyTime="1400-15")) == ["1.2"]


def test_a_uid_list_and_modalities_in_study(studies):
    assert uids(study_query(StudyInstanceUID="1.3\\1.1\\9.9")) == ["1.1", "1.3"]
    assert uids(study_query(ModalitiesInStudy="MR")) == ["1.2"]
    assert uids(study_query(ModalitiesInStudy="SR\\MR")) == ["1.1", "1.2"]


def test_counts_are_of_held_instances(studies):
    query = study_query(PatientID="P1", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")
    rows = {r["StudyInstanceUID"]: r for r in q.search(query, limit=10).rows}
    assert rows["1.1"]["NumberOfStudyRelatedSeries"] == 2
    assert rows["1.1"]["NumberOfStudyRelatedInstances"] == 4
    assert rows["1.2"]["NumberOfStudyRelatedInstances"] == 2


def test_a_capped_answer_says_more_matched(studies):
    results = q.search(study_query(), limit=2)
    assert len(results.rows) == 2 and results.more
    assert not q.search(study_query(), limit=3).more
    assert [r["StudyInstanceUID"] for r in q.search(study_query(), limit=2, offset=2).rows] == ["1.1"]


def test_patient_level_groups_studies_by_patient(studies):
    query = q.query_make(
        level="PATIENT",
        model=q.PATIENT_ROOT,
        keys=[("PatientName", "D*"), ("NumberOfPatientRelatedStudies", ""), ("NumberOfPatientRelatedInstances", "")],
    )
    rows = {r["PatientID"]: r for r in q.search(query, limit=10).rows}
    assert set(rows) == {"P1", "P2"}
    assert rows["P1"]["PatientName"] == "Doe^Jane"
    assert rows["P1"]["NumberOfPatientRelatedStudies"] == 2
    assert rows["P1"]["NumberOfPatientRelatedInstances"] == 6


def test_series_and_image_levels_within_a_study(studies):
    series = q.query_make(level="SERIES", keys=[("StudyInstanceUID", "1.1"), ("NumberOfSeriesRelatedInstances", "")])
    rows = q.search(series, limit=10).rows
    assert [(r["SeriesInstanceUID"], r["Modality"], r["NumberOfSeriesRelatedInstances"]) for r in rows] == [
        ("1.1.1", "CT", 3),
        ("1.1.2", "SR", 1),
    ]
    assert all(r["StudyInstanceUID"] == "1.1" for r in rows)
    images = q.query_make(level="IMAGE", keys=[("SeriesInstanceUID", "1.1.1"), ("InstanceNumber", "2")])
    assert uids(images) == ["1.1.1.2"]
    assert uids(q.query_make(level="IMAGE", keys=[("StudyInstanceUID", "1.4")])) == []  # purged
