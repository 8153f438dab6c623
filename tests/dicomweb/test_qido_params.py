"""QIDO-RS parameters parsed into the query engine's Query, matches written as DICOM JSON, and WADO-RS Accept
headers read: pure functions, no database."""

import pytest

from apps.archive.query import IMAGE, SERIES, STUDY, QueryError
from apps.dicomweb import wado
from apps.dicomweb.qido import match_json, search_parse

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"


def keys(search) -> dict:
    return dict(search.query.keys)


def test_it_reads_an_attribute_by_keyword_or_by_tag_alike():
    by_keyword = search_parse(level=STUDY, params=[("PatientID", "P-1"), ("StudyDate", "20200101-20201231")])
    by_tag = search_parse(level=STUDY, params=[("00100020", "P-1"), ("00080020", "20200101-20201231")])

    assert by_keyword.query == by_tag.query
    matching = {a.keyword: v for a, v in by_keyword.query.matching()}
    assert matching == {"PatientID": "P-1", "StudyDate": "20200101-20201231"}


def test_it_returns_the_default_attributes_of_the_level_and_what_was_matched_or_included():
    search = search_parse(level=STUDY, params=[("PatientName", "DOE*"), ("includefield", "InstitutionName")])

    fields = search.fields()
    assert fields[0] == "StudyInstanceUID"  # the unique key first, as C-FIND returns it
    for keyword in ("PatientName", "InstitutionName", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
        assert keyword in fields
    assert "SeriesInstanceUID" not in fields and "Modality" not in fields
    assert keys(search)["PatientName"] == "DOE*" and keys(search)["InstitutionName"] == ""


def test_a_search_below_a_study_named_in_the_url_leaves_its_study_attributes_out():
    inside = search_parse(level=SERIES, params=[], study=STUDY_UID)
    everywhere = search_parse(level=SERIES, params=[])

    assert {a.keyword: v for a, v in inside.query.matching()} == {"StudyInstanceUID": STUDY_UID}
    assert "PatientID" not in inside.fields() and "Modality" in inside.fields()
    assert "PatientID" in everywhere.fields() and "Modality" in everywhere.fields()
    instances = search_parse(level=IMAGE, params=[], study=STUDY_UID, series=SERIES_UID)
    assert {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"} <= set(instances.fields())
    assert "Modality" not in instances.fields()


def test_includefield_all_asks_for_every_attribute_held_at_the_level_and_above():
    search = search_parse(level=SERIES, params=[("includefield", "all")])

    assert {"PatientBirthDate", "InstitutionName", "BodyPartExamined", "NumberOfSeriesRelatedInstances"} <= set(
        search.fields()
    )
    assert "SOPInstanceUID" not in search.fields()


def test_an_included_attribute_the_router_does_not_hold_is_left_out_and_one_that_is_no_attribute_refused():
    search = search_parse(level=STUDY, params=[("includefield", "Rows,00081030"), ("includefield", "PatientSex")])

    assert "Rows" not in search.fields()
    assert {"StudyDescription", "PatientSex"} <= set(search.fields())
    with pytest.raises(QueryError, match="NoSuchKeyword"):
        search_parse(level=STUDY, params=[("includefield", "NoSuchKeyword")])


def test_limit_offset_and_fuzzymatching_are_read():
    search = search_parse(level=STUDY, params=[("limit", "10"), ("offset", "20"), ("fuzzymatching", "true")])

    assert (search.limit, search.offset, search.fuzzy) == (10, 20, True)
    plain = search_parse(level=STUDY, params=[])
    assert (plain.limit, plain.offset, plain.fuzzy) == (None, 0, False)


@pytest.mark.parametrize(
    "params, message",
    [
        ([("limit", "0")], "limit must be a whole number of at least 1"),
        ([("limit", "ten")], "limit must be"),
        ([("offset", "-1")], "offset must be a whole number of at least 0"),
        ([("fuzzymatching", "maybe")], "fuzzymatching must be true or false"),
        ([("StudyDate", "2020-2021")], "is not YYYYMMDD"),
        ([("StudyDate", "-")], "has no bound"),
        ([("StudyTime", "25h")], "is not HH"),
        ([("NoSuchKeyword", "x")], "neither a query parameter nor a DICOM attribute"),
        ([("7FE10010", "x")], "not an attribute of the DICOM dictionary"),
        ([("Modality", "CT")], "Modality cannot be matched in a study search; these can: .*ModalitiesInStudy"),
        ([("Rows", "512")], "Rows cannot be matched"),
        ([("NumberOfStudyRelatedSeries", "2")], "cannot be matched"),
        ([("00081110.00081150", "1.2")], "inside sequences is not supported"),
        ([("PatientID", "A"), ("PatientID", "B")], "PatientID is given twice"),
    ],
)
def test_a_parameter_the_router_cannot_honour_is_refused_with_a_reason(params, message):
    with pytest.raises(QueryError, match=message):
        search_parse(level=STUDY, params=params)


def test_the_url_s_uids_are_checked_and_not_given_twice():
    with pytest.raises(QueryError, match="not a valid UID"):
        search_parse(level=SERIES, params=[], study="1.2.abc")
    with pytest.raises(QueryError, match="StudyInstanceUID is in the URL already"):
        search_parse(level=SERIES, params=[("StudyInstanceUID", STUDY_UID)], study=STUDY_UID)


def test_a_uid_list_may_be_separated_by_commas():
    search = search_parse(level=STUDY, params=[("StudyInstanceUID", f"{STUDY_UID},{SERIES_UID}")])

    assert keys(search)["StudyInstanceUID"] == f"{STUDY_UID}\\{SERIES_UID}"
    modalities = search_parse(level=STUDY, params=[("ModalitiesInStudy", "CT,MR")])
    assert keys(modalities)["ModalitiesInStudy"] == "CT\\MR"


def test_a_match_is_dicom_json_by_tag_with_names_numbers_and_empty_values_as_ps3_18_f2_says():
    row = {
        "StudyInstanceUID": STUDY_UID,
        "PatientName": "Doe^Jane",
        "PatientID": "",
        "ModalitiesInStudy": "CT\\MR",
        "NumberOfStudyRelatedInstances": 3,
        "StudyDate": "20200102",
    }
    fields = ["StudyInstanceUID", "PatientName", "PatientID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]

    out = match_json(row, [*fields, "AccessionNumber"], retrieve_url="http://h/dicomweb/studies/1")

    assert out == {
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00081190": {"vr": "UR", "Value": ["http://h/dicomweb/studies/1"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00100020": {"vr": "LO"},
        "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
        "00201208": {"vr": "IS", "Value": [3]},
    }
    assert list(out) == sorted(out)  # StudyDate was not asked for; AccessionNumber had no column in the row


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("", wado.ANY),
        ('multipart/related; type="application/dicom"', wado.ANY),  # what dicomweb-client sends by default
        ('multipart/related; type="application/dicom"; transfer-syntax=*', wado.ANY),
        ("*/*", wado.ANY),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1, '
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
            {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"},
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5, */*;q=0',
            {"1.2.840.10008.1.2.5"},
        ),
    ],
)
def test_it_reads_the_transfer_syntaxes_a_retrieve_accepts(accept, expected):
    assert wado.syntaxes_accepted(accept) == expected


@pytest.mark.parametrize(
    "accept", ["application/dicom+json", 'multipart/related; type="image/jpeg"', "*/*;q=0", "application/zip"]
)
def test_a_retrieve_refuses_an_accept_it_cannot_serve(accept):
    with pytest.raises(wado.NotAcceptable):
        wado.syntaxes_accepted(accept)


def test_searches_and_metadata_answer_dicom_json_or_plain_json():
    for accept in ("", "application/dicom+json", "application/json", "*/*", "application/dicom+json, text/html"):
        wado.json_accepted(accept)
    with pytest.raises(wado.NotAcceptable):
        wado.json_accepted('multipart/related; type="application/dicom+xml"')
