"""QIDO-RS and WADO-RS in the web process's own code (Django's test client): who may read, what a bad request
is told, what a purge leaves, what is audited and logged. The clients' view of it: test_read_clients.py."""

import json
import logging

import pytest
from django.contrib.auth.models import Group, User

from apps.accounts.services import token_issue
from apps.audit.models import AuditEvent
from apps.dicomweb.permissions import STOW_SENDERS_GROUP

from ..support.dicom import shipped, synthetic_study
from .reads import hold, purge

pytestmark = pytest.mark.django_db

EXPLICIT_LE, JPEG_BASELINE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"
DICOM_PARTS = 'multipart/related; type="application/dicom"'


def get(client, path: str, token: str | None, accept: str = "", **params):
    headers = {"HTTP_AUTHORIZATION": f"Token {token}"} if token else {}
    if accept:
        headers["HTTP_ACCEPT"] = accept
    return client.get(f"/dicomweb/{path}", params, **headers)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def study(storage, tmp_path):
    _, paths = synthetic_study(tmp_path / "study", count=3, patient_name="Doe^Jane", patient_id="P-7")
    return hold(storage, paths)


def test_reading_needs_a_token_and_the_reader_role_or_staff(client, study, reader, staff_token):
    stranger = User.objects.create(username="pacs-sender")
    stranger.groups.add(Group.objects.get_or_create(name=STOW_SENDERS_GROUP)[0])
    sender_token = token_issue(user=stranger, name="STOW-RS")[1]
    uid = study.study_instance_uid

    for path in ("studies", f"studies/{uid}", f"studies/{uid}/metadata", f"studies/{uid}/series", "instances"):
        assert get(client, path, None).status_code == 401, path
        refused = get(client, path, sender_token)
        assert refused.status_code == 403, path
        assert "dicomweb-readers" in refused.json()["error"]["message"]
        assert get(client, path, reader).status_code == 200, path
        assert get(client, path, staff_token).status_code == 200, path
    # The reader role stores nothing: STOW-RS stays the sender role's.
    posted = client.post("/dicomweb/studies", b"", content_type=DICOM_PARTS, HTTP_AUTHORIZATION=f"Token {reader}")
    assert posted.status_code == 403


@pytest.mark.parametrize(
    "params, message",
    [
        ({"StudyDate": "20201231-2020"}, "is not YYYYMMDD"),
        ({"PatientAge": "040Y"}, "PatientAge cannot be matched in a study search"),
        ({"NotAnAttribute": "1"}, "neither a query parameter nor a DICOM attribute"),
        ({"limit": "-5"}, "limit must be a whole number"),
    ],
)
def test_a_bad_parameter_answers_400_saying_what_is_wrong(client, reader, params, message):
    response = get(client, "studies", reader, **params)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert message in response.json()["error"]["message"]


def test_no_match_is_200_with_an_empty_array(client, study, reader):
    response = get(client, "studies", reader, PatientID="nobody")

    assert (response.status_code, response["Content-Type"], response.json()) == (200, "application/dicom+json", [])


def test_fuzzymatching_is_accepted_and_ignored_with_a_warning(client, study, reader):
    response = get(client, "studies", reader, PatientName="doe^jane", fuzzymatching="true")

    assert response.status_code == 200 and response.json() == []  # literal matching: the case differs
    assert "fuzzymatching parameter is not supported" in response["Warning"]
    assert response["Warning"].startswith("299 ")


def test_a_search_cut_by_its_limit_says_more_can_be_requested(client, storage, tmp_path, reader):
    for n in range(3):
        hold(storage, synthetic_study(tmp_path / str(n), count=1, patient_id="P-MANY")[1])

    cut = get(client, "studies", reader, PatientID="P-MANY", limit="2")
    rest = get(client, "studies", reader, PatientID="P-MANY", limit="2", offset="2")

    assert len(cut.json()) == 2 and "additional results" in cut["Warning"]
    assert len(rest.json()) == 1 and "Warning" not in rest


def test_unknown_and_purged_resources_answer_404_and_a_partly_purged_one_the_held_instances(client, study, reader):
    uid = study.study_instance_uid
    instances = list(study.instances.order_by("pk"))
    series_uid = instances[0].series.series_instance_uid

    assert get(client, "studies/1.2.3.999", reader).status_code == 404
    listed = get(client, f"studies/{uid}%5C1.2.3.999", reader)  # a backslash: a UID list, in a C-MOVE
    assert listed.status_code == 400 and "not a valid UID" in listed.json()["error"]["message"]
    purge(instances[:1])
    partly = get(client, f"studies/{uid}", reader)
    assert partly.status_code == 200
    assert "1 instances named by this request were purged" in partly["Warning"]
    parts = body(partly)
    assert instances[0].sop_instance_uid.encode() not in parts
    assert all(i.sop_instance_uid.encode() in parts for i in instances[1:])
    gone = get(client, f"studies/{uid}/series/{series_uid}/instances/{instances[0].sop_instance_uid}", reader)
    assert gone.status_code == 404 and "purged" in gone.json()["error"]["message"]
    found = get(client, f"studies/{uid}/instances", reader)
    assert {m["00080018"]["Value"][0] for m in found.json()} == {i.sop_instance_uid for i in instances[1:]}
    purge(instances)
    assert get(client, f"studies/{uid}", reader).status_code == 404
    assert get(client, f"studies/{uid}/metadata", reader).status_code == 404
    assert get(client, "studies", reader, StudyInstanceUID=uid).json() == []


def test_a_retrieve_in_another_transfer_syntax_answers_406_as_the_router_never_transcodes(client, storage, reader):
    jpeg = hold(storage, [shipped("jpeg")])  # stored as JPEG baseline
    uid = jpeg.study_instance_uid

    other = get(client, f"studies/{uid}", reader, accept=f"{DICOM_PARTS}; transfer-syntax={EXPLICIT_LE}")
    assert other.status_code == 406
    assert JPEG_BASELINE in other.json()["error"]["message"]
    for accept in (f"{DICOM_PARTS}; transfer-syntax={JPEG_BASELINE}", f"{DICOM_PARTS}; transfer-syntax=*", DICOM_PARTS):
        response = get(client, f"studies/{uid}", reader, accept=accept)
        assert response.status_code == 200, accept
        assert f"transfer-syntax={JPEG_BASELINE}".encode() in body(response)
    assert get(client, f"studies/{uid}", reader, accept="application/zip").status_code == 406
    assert get(client, "studies", reader, accept='multipart/related; type="application/dicom+xml"').status_code == 406


def test_every_read_is_audited_and_logged_without_patient_names(client, study, reader, caplog):
    uid = study.study_instance_uid
    caplog.set_level(logging.INFO)

    get(client, "studies", reader, PatientName="Doe^Jane")
    body(get(client, f"studies/{uid}", reader))
    body(get(client, f"studies/{uid}/metadata", reader))

    events = list(AuditEvent.objects.order_by("pk"))
    assert [e.action for e in events] == ["dicomweb.query", "dicomweb.retrieve", "dicomweb.metadata"]
    assert {e.username for e in events} == {"viewer-3"}
    assert [e.study_instance_uid for e in events[1:]] == [uid, uid]
    assert "PatientName" in events[0].detail  # the key used, not its value
    for text in [e.detail for e in events] + [r.getMessage() for r in caplog.records]:
        assert "Doe" not in text and "Jane" not in text


def test_metadata_is_each_header_as_dicom_json_without_pixel_data(client, study, reader):
    response = get(client, f"studies/{study.study_instance_uid}/metadata", reader)

    assert response["Content-Type"] == "application/dicom+json"
    items = json.loads(body(response))
    assert sorted(i["00080018"]["Value"][0] for i in items) == sorted(
        study.instances.values_list("sop_instance_uid", flat=True)
    )
    assert all("7FE00010" not in i for i in items)
    assert items[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
