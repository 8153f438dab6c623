"""QIDO-RS and WADO-RS with dicomweb-client against the web process as it runs (gunicorn): the same matches as
the query engine behind C-FIND finds for the same keys, and the stored files' bytes, exactly."""

import hashlib
from email import policy
from email.parser import BytesParser
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.conf import settings

from apps.archive.query import IMAGE, SERIES, STUDY, query_make, search
from apps.studies.models import Instance

from ..support.dicom import shipped, synthetic_study
from .reads import hold, purge, stored_sha256

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DICOM_PARTS = 'multipart/related; type="application/dicom"'


def client(web, token: str | None) -> DICOMwebClient:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return DICOMwebClient(f"{web.url}/dicomweb", headers=headers)


def dated(paths, date: str):
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyDate = date
        ds.save_as(path)
    return paths


@pytest.fixture
def studies(storage, tmp_path) -> dict:
    """Five held studies: three synthetic ones of three patients, two of pydicom's files (MR, JPEG)."""
    held = {
        "jane": synthetic_study(tmp_path / "a", count=3, patient_name="Doe^Jane", patient_id="P-1")[1],
        "richard": synthetic_study(
            tmp_path / "b", count=2, modality="MR", patient_name="Roe^Richard", patient_id="P-2"
        )[1],
        "john": synthetic_study(tmp_path / "c", count=1, patient_name="Doe^John", patient_id="P-31")[1],
        "mr": [shipped("mr")],
        "jpeg": [shipped("jpeg")],
    }
    dated(held["jane"], "20200615")
    dated(held["richard"], "20210101")
    dated(held["john"], "20201231")
    return {name: hold(storage, paths) for name, paths in held.items()}


def uids(matches: list[dict], tag: str) -> set[str]:
    return {m[tag]["Value"][0] for m in matches}


def engine(level: str, keys: dict, *, limit: int = 1000, offset: int = 0) -> list[dict]:
    query = query_make(level=level, keys=list(keys.items()))
    return search(query, limit=limit, offset=offset, fold_person_names=settings.QR_FOLD_PERSON_NAMES).rows


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({}, {"jane", "richard", "john", "mr", "jpeg"}),
        ({"PatientName": "Doe*"}, {"jane", "john"}),
        ({"PatientName": "Doe^J?n*"}, {"jane"}),
        ({"StudyDate": "20200101-20201231"}, {"jane", "john"}),
        ({"StudyDate": "20201231-"}, {"john", "richard"}),
        ({"ModalitiesInStudy": "MR"}, {"richard", "mr"}),
        ({"00100020": "P-2"}, {"richard"}),
        ({"PatientID": "P-?"}, {"jane", "richard"}),
    ],
)
def test_a_study_search_finds_what_the_query_engine_finds_for_the_same_keys(web, reader, studies, filters, expected):
    found = client(web, reader).search_for_studies(search_filters=filters)

    keys = {("PatientID" if k == "00100020" else k): v for k, v in filters.items()}
    assert uids(found, "0020000D") == {r["StudyInstanceUID"] for r in engine(STUDY, keys)}
    assert uids(found, "0020000D") == {studies[name].study_instance_uid for name in expected}


def test_a_study_match_carries_the_default_attributes_and_a_retrieve_url_that_retrieves(web, reader, studies):
    dicomweb = client(web, reader)
    jane = studies["jane"]

    (match,) = dicomweb.search_for_studies(search_filters={"PatientID": "P-1"})

    ds = pydicom.Dataset.from_json(match)
    assert (ds.PatientID, str(ds.PatientName), ds.StudyDate, ds.ModalitiesInStudy) == (
        "P-1",
        "Doe^Jane",
        "20200615",
        "CT",
    )
    assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) == (1, 3)
    assert ds.InstanceAvailability == "ONLINE"
    # Built from the request's Host header: dicomweb-client sends its host without the port.
    url = urlsplit(ds.RetrieveURL)
    assert (url.scheme, url.hostname, url.path) == ("http", "127.0.0.1", f"/dicomweb/studies/{jane.study_instance_uid}")
    response = requests.get(f"{web.url}{url.path}", headers={"Authorization": f"Token {reader}"}, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(DICOM_PARTS)


def test_limit_and_offset_page_through_the_engine_s_order(web, reader, studies):
    dicomweb = client(web, reader)

    pages = [dicomweb.search_for_studies(limit=2, offset=offset) for offset in (0, 2, 4)]

    assert [len(p) for p in pages] == [2, 2, 1]
    order = [m["0020000D"]["Value"][0] for page in pages for m in page]
    assert order == [r["StudyInstanceUID"] for r in engine(STUDY, {})]  # newest received first, no repeats
    assert [m["0020000D"]["Value"][0] for m in dicomweb.search_for_studies(limit=2, get_remaining=True)] == order
    assert uids(dicomweb.search_for_studies(limit=2, offset=1), "0020000D") == set(order[1:3])


def test_includefield_adds_attributes_to_the_defaults(web, reader, studies):
    dicomweb = client(web, reader)

    plain = dicomweb.search_for_studies(search_filters={"PatientID": "P-1"})[0]
    more = dicomweb.search_for_studies(search_filters={"PatientID": "P-1"}, fields=["StudyDescription", "00080080"])[0]
    everything = dicomweb.search_for_studies(search_filters={"PatientID": "P-1"}, fields=["all"])[0]

    assert "00081030" not in plain and "00080080" not in plain
    assert {"00081030", "00080080"} <= set(more)
    assert {"00081030", "00080080"} <= set(everything)


def test_series_and_instance_searches_find_what_the_engine_finds(web, reader, studies):
    dicomweb = client(web, reader)
    richard = studies["richard"].study_instance_uid
    (series_uid,) = studies["richard"].series.values_list("series_instance_uid", flat=True)

    in_study = dicomweb.search_for_series(study_instance_uid=richard)
    mr_series = dicomweb.search_for_series(search_filters={"Modality": "MR"})
    in_series = dicomweb.search_for_instances(study_instance_uid=richard, series_instance_uid=series_uid)
    in_study_instances = dicomweb.search_for_instances(study_instance_uid=richard)
    jpeg = dicomweb.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"})

    assert uids(in_study, "0020000E") == {series_uid}
    assert uids(mr_series, "0020000E") == {r["SeriesInstanceUID"] for r in engine(SERIES, {"Modality": "MR"})}
    assert len(mr_series) == 2 and "00100020" in mr_series[0]  # with the study's attributes: no study in the URL
    expected = {r["SOPInstanceUID"] for r in engine(IMAGE, {"StudyInstanceUID": richard})}
    assert uids(in_series, "00080018") == uids(in_study_instances, "00080018") == expected
    assert len(expected) == 2
    assert uids(jpeg, "00080018") == set(studies["jpeg"].instances.values_list("sop_instance_uid", flat=True))


def parts_of(response: requests.Response) -> list[bytes]:
    """The parts of a multipart/related body, split by the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + response.content)
    return [part.get_payload(decode=True) for part in message.iter_parts()]


def test_retrieves_send_the_stored_files_byte_for_byte(web, reader, studies):
    dicomweb = client(web, reader)
    for name in ("jane", "jpeg"):
        study = studies[name]
        instances = list(study.instances.order_by("pk"))
        response = requests.get(
            f"{web.url}/dicomweb/studies/{study.study_instance_uid}",
            headers={"Authorization": f"Token {reader}", "Accept": DICOM_PARTS},
            timeout=30,
        )
        sent = sorted(hashlib.sha256(part).hexdigest() for part in parts_of(response))
        assert sent == sorted(stored_sha256(i) for i in instances) == sorted(i.sha256 for i in instances), name

    jane = studies["jane"]
    series_uid = jane.series.get().series_instance_uid
    uid = jane.study_instance_uid
    expected = set(jane.instances.values_list("sop_instance_uid", flat=True))
    assert {ds.SOPInstanceUID for ds in dicomweb.retrieve_study(uid)} == expected
    assert {ds.SOPInstanceUID for ds in dicomweb.retrieve_series(uid, series_uid)} == expected
    one = jane.instances.order_by("pk").first()
    ds = dicomweb.retrieve_instance(uid, series_uid, one.sop_instance_uid)
    assert ds.SOPInstanceUID == one.sop_instance_uid
    assert ds.PixelData == pydicom.dcmread(settings.STORAGE_ROOT / one.path).PixelData
    jpeg = studies["jpeg"].instances.get()
    (compressed,) = dicomweb.retrieve_study(studies["jpeg"].study_instance_uid)
    assert compressed.file_meta.TransferSyntaxUID == jpeg.transfer_syntax_uid  # as stored: never transcoded


def test_metadata_is_each_held_instance_s_header_without_pixel_data(web, reader, studies):
    dicomweb = client(web, reader)
    jane = studies["jane"]

    metadata = dicomweb.retrieve_study_metadata(jane.study_instance_uid)

    assert uids(metadata, "00080018") == set(jane.instances.values_list("sop_instance_uid", flat=True))
    for item in metadata:
        ds = pydicom.Dataset.from_json(item)
        assert "PixelData" not in ds
        assert (ds.PatientID, ds.Modality, ds.Rows) == ("P-1", "CT", 128)


def test_a_purged_instance_is_neither_found_nor_retrieved(web, reader, studies):
    dicomweb = client(web, reader)
    jane = studies["jane"]
    uid = jane.study_instance_uid
    series_uid = jane.series.get().series_instance_uid
    gone, *kept = jane.instances.order_by("pk")

    purge([gone])

    kept_uids = {i.sop_instance_uid for i in kept}
    assert uids(dicomweb.search_for_instances(study_instance_uid=uid), "00080018") == kept_uids
    assert {ds.SOPInstanceUID for ds in dicomweb.retrieve_study(uid)} == kept_uids
    assert uids(dicomweb.retrieve_study_metadata(uid), "00080018") == kept_uids
    (match,) = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": uid})
    assert match["00201208"]["Value"] == [2]
    with pytest.raises(requests.HTTPError) as refused:
        dicomweb.retrieve_instance(uid, series_uid, gone.sop_instance_uid)
    assert refused.value.response.status_code == 404
    assert Instance.objects.get(pk=gone.pk).file_state == "purged"


def test_no_token_is_401_and_an_account_without_the_reader_role_403(web, outsider, studies):
    for token, status in ((None, 401), (outsider, 403)):
        dicomweb = client(web, token)
        with pytest.raises(requests.HTTPError) as refused:
            dicomweb.search_for_studies()
        assert refused.value.response.status_code == status
        with pytest.raises(requests.HTTPError) as refused:
            list(dicomweb.retrieve_study(studies["jane"].study_instance_uid))
        assert refused.value.response.status_code == status
