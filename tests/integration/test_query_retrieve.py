"""Query/retrieve against the real SCP with dcmtk's findscu, movescu and getscu, and Orthanc querying the router
as one of its modalities: levels and models, matching, C-CANCEL, the result cap, byte-identical retrieves, an
unknown move destination, a purged study, callers not allowed."""

import hashlib
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from apps.archive.models import Retrieval, RetrievalItem
from apps.ingest.models import AllowedCaller
from apps.routing.models import Destination
from apps.studies.models import FileState, Instance, ReceivedInstance, Study
from apps.studies.services import instance_files_remove, instances_purge_mark

from ..conftest import require_tool
from ..support.dicom import dataset_bytes, shipped, synthetic_study
from ..support.orthanc import Orthanc
from ..support.pipeline import receive_study, run_steps
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def hold(storage: Path, paths: list[Path]) -> Study:
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="persist")
    return Study.objects.get(pk=study_id)


@pytest.fixture
def held(storage, tmp_path):
    """Three studies of two patients (a late series in one), and the shipped MR; the callers allowed."""
    jane = "PAT%1"  # a % in a value: matched literally
    uid_a, a = synthetic_study(tmp_path / "a", count=3, patient_id=jane, patient_name="Doe^Jane", modality="CT")
    _, a2 = synthetic_study(tmp_path / "a2", count=2, patient_id=jane, patient_name="Doe^Jane", study_uid=uid_a)
    _, b = synthetic_study(tmp_path / "b", count=2, patient_id=jane, patient_name="Doe^Jane", modality="MR")
    _, c = synthetic_study(tmp_path / "c", count=1, patient_id="PAT21", patient_name="Roe^Rick", modality="CT")
    studies = {"a": hold(storage, a + a2), "b": hold(storage, b), "c": hold(storage, c)}
    studies["mr"] = hold(storage, [shipped("mr")])
    Study.objects.filter(pk=studies["b"].pk).update(study_date="20240301")
    Study.objects.filter(pk=studies["c"].pk).update(study_date="20231115")
    AllowedCaller.objects.create(ae_title="FINDER", may_query=True, may_retrieve=True)
    AllowedCaller.objects.create(ae_title="LOOKER", may_query=True)
    AllowedCaller.objects.create(ae_title="MODALITY")
    return studies


def findscu(port: int, folder: Path, *keys: str, model: str = "-S", calling: str = "FINDER", extra=()) -> list:
    """The responses findscu got, as datasets, and its run."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [require_tool("findscu"), "-v", model, "-aet", calling, "-aec", "ROUTER", "-X", "-od", str(folder)]
    for key in keys:
        args += ["-k", key]
    run = subprocess.run([*args, *extra, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    return [dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))], run


def movescu(port: int, destination: str, *keys: str, calling: str = "FINDER", model: str = "-S"):
    args = [require_tool("movescu"), "-v", model, "-aet", calling, "-aec", "ROUTER", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    return subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=120)


def study_uids(responses: list) -> list[str]:
    return sorted(r.StudyInstanceUID for r in responses)


def test_findscu_at_each_level_and_both_models_with_wildcards_ranges_uid_lists_and_a_percent(held, start_scp, tmp_path):
    _, port = start_scp()
    a, b, c = held["a"], held["b"], held["c"]
    out = iter(tmp_path / f"find{n}" for n in range(100))

    found, run = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "PatientID=PAT%1", "StudyInstanceUID")
    assert study_uids(found) == sorted([a.study_instance_uid, b.study_instance_uid]), run.stdout + run.stderr
    found, _ = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "PatientID=PAT_1")
    assert found == []  # _ is no wildcard either
    found, _ = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "PatientName=R*", "PatientID")
    assert [(r.PatientID, str(r.PatientName)) for r in found] == [("PAT21", "Roe^Rick")]
    found, _ = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "PatientName=D?e^J*")
    assert study_uids(found) == sorted([a.study_instance_uid, b.study_instance_uid])
    found, _ = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "StudyDate=20231101-20231130")
    assert study_uids(found) == [c.study_instance_uid]
    found, _ = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "StudyDate=20240201-")
    assert study_uids(found) == [b.study_instance_uid]
    uid_list = f"StudyInstanceUID={a.study_instance_uid}\\{c.study_instance_uid}\\1.2.3.4"
    found, _ = findscu(
        port, next(out), "QueryRetrieveLevel=STUDY", uid_list, "ModalitiesInStudy", "NumberOfStudyRelatedSeries"
    )
    by_uid = {r.StudyInstanceUID: r for r in found}
    assert set(by_uid) == {a.study_instance_uid, c.study_instance_uid}
    assert by_uid[a.study_instance_uid].NumberOfStudyRelatedSeries == 2
    found, _ = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR", "PatientID=PAT*")
    assert study_uids(found) == [b.study_instance_uid]

    # Patient root: PATIENT, STUDY, SERIES, IMAGE.
    found, _ = findscu(
        port,
        next(out),
        "QueryRetrieveLevel=PATIENT",
        "PatientID=PAT*",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        model="-P",
    )
    patients = {r.PatientID: r for r in found}
    assert set(patients) == {"PAT%1", "PAT21"}
    assert patients["PAT%1"].NumberOfPatientRelatedStudies == 2
    found, _ = findscu(port, next(out), "QueryRetrieveLevel=STUDY", "PatientID=PAT21", "StudyInstanceUID", model="-P")
    assert study_uids(found) == [c.study_instance_uid]
    found, _ = findscu(
        port,
        next(out),
        "QueryRetrieveLevel=SERIES",
        "PatientID=PAT%1",
        f"StudyInstanceUID={a.study_instance_uid}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        model="-P",
    )
    assert sorted(int(r.NumberOfSeriesRelatedInstances) for r in found) == [2, 3]
    series_uid = a.series.order_by("pk").first().series_instance_uid
    found, _ = findscu(
        port,
        next(out),
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={a.study_instance_uid}",
        f"SeriesInstanceUID={series_uid}",
        "SOPInstanceUID",
        "InstanceNumber=2",
    )
    expected = Instance.objects.get(series__series_instance_uid=series_uid, instance_number="2")
    assert [r.SOPInstanceUID for r in found] == [expected.sop_instance_uid]
    # Study root has no PATIENT level: refused as the identifier not matching the SOP class (A900).
    found, run = findscu(port, next(out), "QueryRetrieveLevel=PATIENT", "PatientID")
    assert found == []
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in run.stdout + run.stderr


def test_findscu_cancel_and_the_result_cap(held, start_scp, service_env, tmp_path):
    # Enough matches that a C-CANCEL sent after the first response arrives long before the last is sent
    # (rows only: C-FIND reads no file).
    many = [Study(study_instance_uid=f"2.25.{n}", patient_id="MANY") for n in range(1500)]
    Study.objects.bulk_create(many)
    first = Instance.objects.first()
    Instance.objects.bulk_create(
        Instance(
            study=study,
            series=first.series,
            received=ReceivedInstance.objects.create(
                sop_instance_uid=f"2.25.{n}.1",
                sop_class_uid="1.2",
                study_instance_uid=study.study_instance_uid,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="x",
                size=1,
            ),
            sop_instance_uid=f"2.25.{n}.1",
            path="x",
            size=1,
        )
        for n, study in enumerate(Study.objects.filter(patient_id="MANY"))
    )
    _, port = start_scp()
    found, run = findscu(
        port, tmp_path / "cancel", "QueryRetrieveLevel=STUDY", "PatientID=MANY", extra=["--cancel", "1"]
    )
    assert 1 <= len(found) < 1000, run.stdout[-2000:]
    assert "Received Final Find Response (Cancel" in run.stdout + run.stderr

    _, capped = start_scp({**service_env, "QR_MAX_RESULTS": "2"}, name="scp-capped")
    found, run = findscu(capped, tmp_path / "capped", "QueryRetrieveLevel=STUDY")
    assert len(found) == 2
    text = run.stdout + run.stderr
    assert "Received Final Find Response (Unknown Status: 0xb001)" in text  # matching reached the limit
    assert "Release Failed" not in text  # one final response, nothing after it


def test_callers_not_allowed_are_refused_and_queries_are_audited_without_values(held, start_scp, tmp_path):
    from apps.audit.models import AuditEvent

    scp, port = start_scp()
    found, run = findscu(port, tmp_path / "modality", "QueryRetrieveLevel=STUDY", calling="MODALITY")
    assert found == []
    assert "Status: 0x124" in run.stdout + run.stderr  # Refused: not authorised (dcmtk has no name for it)
    run = movescu(port, "FINDER", "QueryRetrieveLevel=STUDY", "PatientID=PAT21", calling="LOOKER")
    assert "Status: 0x124" in run.stdout + run.stderr
    assert not Retrieval.objects.exists()
    assert "MODALITY at 127.0.0.1 may not query" in scp.log()

    findscu(port, tmp_path / "looker", "QueryRetrieveLevel=STUDY", "PatientName=Doe*", calling="LOOKER")
    event = AuditEvent.objects.get(action="dicom.query", username="LOOKER")
    assert "matching on PatientName" in event.detail and "Doe" not in event.detail
    assert "Doe^Jane" not in scp.log() and "Roe" not in scp.log()  # pynetdicom's identifier logging is off


def test_movescu_sends_the_stored_bytes_through_the_sender_and_the_ledger_records_them(
    held, start_scp, storescp, tmp_path
):
    _, dest_port, folder = storescp("VIEWER")
    Destination.objects.create(name="viewer", ae_title="VIEWER", host="127.0.0.1", port=dest_port)
    _, port = start_scp()
    a = held["a"]

    run = movescu(port, "VIEWER", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a.study_instance_uid}")
    assert run.returncode == 0, run.stdout + run.stderr
    wait_until(lambda: len(list(folder.iterdir())) == 5, timeout=30, what="the five instances at the viewer")
    stored = {i.sop_instance_uid: i for i in a.instances.all()}
    for path in folder.iterdir():
        ds = dcmread(path)
        instance = stored[ds.SOPInstanceUID]
        assert dataset_bytes(path) == dataset_bytes(held_path(instance)), "not byte-identical to what we hold"
    retrieval = Retrieval.objects.get()
    assert (retrieval.kind, retrieval.requested, retrieval.completed, retrieval.failed) == ("move", 5, 5, 0)
    assert retrieval.status == 0x0000 and retrieval.destination.ae_title == "VIEWER"
    sent = dict(RetrievalItem.objects.values_list("sop_instance_uid", "sent_sha256"))
    assert sent == {uid: i.sha256 for uid, i in stored.items()}

    run = movescu(port, "NOWHERE", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a.study_instance_uid}")
    assert "MoveDestinationUnknown" in run.stdout + run.stderr or "A801" in run.stdout + run.stderr
    assert Retrieval.objects.count() == 1


def held_path(instance: Instance) -> Path:
    from django.conf import settings

    return settings.STORAGE_ROOT / instance.path


def test_getscu_retrieves_a_series_on_its_own_association(held, start_scp, tmp_path):
    _, port = start_scp()
    a = held["a"]
    series = a.series.order_by("pk").first()
    folder = tmp_path / "got"
    folder.mkdir()
    run = subprocess.run(
        [
            require_tool("getscu"),
            "-v",
            "-S",
            "-aet",
            "FINDER",
            "-aec",
            "ROUTER",
            "+B",  # bit-preserving: the bytes as they came
            "-od",
            str(folder),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={a.study_instance_uid}",
            "-k",
            f"SeriesInstanceUID={series.series_instance_uid}",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = {dcmread(p).SOPInstanceUID: p for p in folder.iterdir()}
    expected = {i.sop_instance_uid: i for i in series.instances.all()}
    assert set(got) == set(expected) and len(got) == 3
    for uid, path in got.items():
        assert (
            hashlib.sha256(dataset_bytes(path)).digest()
            == hashlib.sha256(dataset_bytes(held_path(expected[uid]))).digest()
        )
    assert Retrieval.objects.get().kind == "get"


def test_a_purged_study_is_failed_sub_operations_never_success(held, start_scp, storescp):
    from django.utils import timezone

    _, dest_port, folder = storescp("VIEWER")
    Destination.objects.create(name="viewer", ae_title="VIEWER", host="127.0.0.1", port=dest_port)
    c = held["c"]
    ids = list(c.instances.values_list("pk", flat=True))
    instances_purge_mark(instance_ids=ids, reason="delivered", now=timezone.now())
    instance_files_remove(instance_ids=ids)
    assert set(Instance.objects.filter(pk__in=ids).values_list("file_state", flat=True)) == {FileState.PURGED}
    scp, port = start_scp()

    run = movescu(port, "VIEWER", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={c.study_instance_uid}")
    text = run.stdout + run.stderr
    assert "Success" not in text.split("Final Move Response")[-1], text
    assert list(folder.iterdir()) == []
    retrieval = Retrieval.objects.get()
    assert (retrieval.completed, retrieval.failed, retrieval.status) == (0, 1, 0xA702)
    assert "file purged" in RetrievalItem.objects.get().error
    assert "cannot be sent: file purged" in scp.log()
    # Nor is it offered by a query any more.
    found, _ = findscu(port, Path(folder.parent / "after"), "QueryRetrieveLevel=STUDY", "PatientID=PAT21")
    assert found == []


def test_orthanc_queries_and_retrieves_from_the_router_as_one_of_its_modalities(held, start_scp, tmp_path, log_dir):
    scp_port_holder = {}
    _, port = start_scp()
    scp_port_holder["port"] = port
    orthanc = Orthanc(
        tmp_path / "orthanc",
        log_dir=log_dir,
        extra={"DicomModalities": {"router": ["ROUTER", "127.0.0.1", port]}},
    )
    try:
        AllowedCaller.objects.create(ae_title="ORTHANC", may_query=True, may_retrieve=True)
        Destination.objects.create(name="orthanc", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port)
        query = orthanc.post("/modalities/router/query", {"Level": "Study", "Query": {"PatientID": "PAT21"}})
        answers = orthanc._get(f"{query['Path']}/answers?expand")
        assert [a["0020,000d"]["Value"] for a in answers] == [held["c"].study_instance_uid]
        orthanc.post(f"{query['Path']}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
        wait_until(lambda: orthanc.instance_count() == 1, timeout=30, what="the study in Orthanc")
        assert Retrieval.objects.get().completed == 1
    finally:
        orthanc.stop()


def test_a_move_to_a_de_identifying_destination_sends_its_transformed_copies_never_the_original(
    held, start_scp, storescp, service_env
):
    from apps.configuration.services import config_import

    _, dest_port, folder = storescp("RESEARCH")
    config_import(
        f"""
transforms:
  - {{name: research, deidentify: true, secret: env:ROUTER_TEST_SECRET}}
destinations:
  - {{name: research, ae_title: RESEARCH, host: 127.0.0.1, port: {dest_port}, transform: research}}
"""
    )
    _, port = start_scp({**service_env, "ROUTER_TEST_SECRET": "0123456789abcdef0123456789abcdef"})
    b = held["b"]

    run = movescu(port, "RESEARCH", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={b.study_instance_uid}")
    assert run.returncode == 0, run.stdout + run.stderr
    wait_until(lambda: len(list(folder.iterdir())) == 2, timeout=30, what="two de-identified instances")
    for path in folder.iterdir():
        ds = dcmread(path)
        assert str(ds.PatientName) != "Doe^Jane" and ds.PatientID != "PAT%1"
        assert ds.StudyInstanceUID != b.study_instance_uid
    stored = set(b.instances.values_list("sha256", flat=True))
    sent = set(RetrievalItem.objects.values_list("sent_sha256", flat=True))
    assert len(sent) == 2 and not sent & stored
