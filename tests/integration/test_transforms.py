"""Per-destination transforms against real dcmtk storescp destinations: a de-identified copy and a plain one of
the same study (with a late series), pseudonyms across studies and secrets, a pseudonym table's miss and a
burned-in ultrasound held for one destination only, a coercion profile, and the ledger's SHA-256."""

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UltrasoundImageStorage

from apps.configuration.services import config_import
from apps.routing.models import Delivery, DeliveryItem
from apps.routing.services import delivery_retry, delivery_send
from apps.transforms import annex_e, engine
from apps.transforms.models import TransformProfile
from apps.transforms.services import pseudonyms_import

from ..conftest import require_tool
from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import dataset_bytes, storescu, synthetic_study
from ..support.pipeline import receive_study, run_steps
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECRET = "0123456789abcdef0123456789abcdef"
OTHER_SECRET = "fedcba9876543210fedcba9876543210"


def config(archive_port: int, research_port: int, *, research_gets: str = "research", more: str = "") -> str:
    return (
        f"""
transforms:
  - name: research
    deidentify: true
    secret: env:ROUTER_TEST_SECRET
{more}
destinations:
  - {{name: archive, ae_title: ARCHIVE, host: 127.0.0.1, port: {archive_port}}}
  - {{name: research, ae_title: RESEARCH, host: 127.0.0.1, port: {research_port}, transform: {research_gets}}}
rules:
  - {{name: everything, priority: 10, match: {{modality: [CT, US]}}, destinations: [archive, research]}}
"""
        + ACHEN_ON_SHIFT
    )


def sorted_by_uid(copies: list, sources: list[Path]) -> list[Path]:
    """The source file of each de-identified copy, in the copies' order (its SOP Instance UID is the keyed
    pseudonym of the source's)."""
    by_pseudonym = {engine.uid_pseudonym(dcmread(p).SOPInstanceUID, SECRET.encode()): p for p in sources}
    return [by_pseudonym[ds.SOPInstanceUID] for ds in copies]


def received(folder: Path) -> list:
    return [dcmread(path) for path in sorted(folder.iterdir())]


def encoding_errors(path: Path) -> list[str]:
    """dcmtk's dcmdump +E: the errors and warnings it finds reading the file."""
    run = subprocess.run([require_tool("dcmdump"), "+E", str(path)], capture_output=True, text=True, timeout=30)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(("E:", "W:"))]


def test_a_study_with_a_late_series_goes_plain_to_one_destination_and_deidentified_to_another(
    start_scp, start_worker, storescp, service_env, tmp_path
):
    _, archive_port, archive = storescp("ARCHIVE")
    _, research_port, research = storescp("RESEARCH")
    config_import(config(archive_port, research_port))
    env = {**service_env, "ROUTER_TEST_SECRET": SECRET}
    _, port = start_scp(env)
    start_worker(env)
    study_uid, first = synthetic_study(tmp_path / "first", count=3, patient_name="Doe^Jane")
    _, late = synthetic_study(tmp_path / "late", count=2, patient_name="Doe^Jane", study_uid=study_uid)

    assert storescu(port, first).returncode == 0
    wait_until(lambda: len(list(research.iterdir())) == 3, timeout=60, what="the first series, de-identified")
    assert storescu(port, late).returncode == 0  # a second association: the late series
    wait_until(lambda: len(list(research.iterdir())) == 5, timeout=60, what="the late series, de-identified")
    wait_until(lambda: len(list(archive.iterdir())) == 5, timeout=60, what="every instance, plain")

    # The plain copy is what the modality sent, byte for byte.
    sent = {dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in first + late}
    for path in archive.iterdir():
        assert dataset_bytes(path) == sent[dcmread(path).SOPInstanceUID]

    # The de-identified copy: nothing identifying left, one study across both associations.
    copies = received(research)
    original = dcmread(first[0])
    for ds in copies:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientName != original.PatientName and ds.PatientID != original.PatientID
        assert ds.get("InstitutionName") != original.InstitutionName  # a dummy (Annex E: X/Z/D)
        assert ds.AccessionNumber != original.AccessionNumber
        assert ds.StudyDate != original.StudyDate
        assert ds.SOPInstanceUID not in sent and ds.StudyInstanceUID != study_uid
        assert not [e for e in ds if e.tag.is_private]
    for ds, source in zip(copies, (dcmread(p) for p in sorted_by_uid(copies, first + late)), strict=True):
        for element in source:
            action = annex_e.basic_action(element.tag)
            if action == "X" and element.tag != 0x00120063:  # Deidentification Method is ours to write
                assert element.tag not in ds, f"{element.keyword} left in the de-identified copy"
            elif action and element.value not in ("", None) and action != "K":
                assert ds.get(element.tag) is None or ds[element.tag].value != element.value, element.keyword
    assert len({ds.StudyInstanceUID for ds in copies}) == 1
    assert len({ds.SeriesInstanceUID for ds in copies}) == 2
    assert len({ds.PatientID for ds in copies}) == 1
    for path in research.iterdir():
        assert set(encoding_errors(path)) <= set(encoding_errors(first[0]))  # no new encoding error

    # A resend gives the same bytes: the ledger's SHA-256 is what the engine makes of the stored file again.
    profile = TransformProfile.objects.get(name="research").engine_profile()
    item = DeliveryItem.objects.filter(delivery__destination__name="research").select_related("instance").first()
    again = engine.transform(
        Path(service_env["STORAGE_ROOT"]) / item.instance.path, tmp_path / "again.dcm", profile, SECRET.encode()
    )
    assert again.sha256 == item.sent_sha256
    assert dcmread(tmp_path / "again.dcm").SeriesInstanceUID in {ds.SeriesInstanceUID for ds in copies}
    plain = DeliveryItem.objects.filter(delivery__destination__name="archive").select_related("instance").first()
    assert plain.sent_sha256 == plain.instance.sha256


@pytest.fixture
def two_destinations(storescp, monkeypatch, default_mapping):
    _, archive_port, archive = storescp("ARCHIVE")
    _, research_port, research = storescp("RESEARCH")
    monkeypatch.setenv("ROUTER_TEST_SECRET", SECRET)
    return archive_port, archive, research_port, research


def route_and_send(storage: Path, paths: list[Path]) -> dict[str, str]:
    due = run_steps(receive_study(storage, paths), until="route")
    return {Delivery.objects.get(pk=pk).destination.name: delivery_send(delivery_id=pk) for pk in due}


def test_the_same_patient_has_the_same_pseudonym_across_studies_and_another_with_another_secret(
    two_destinations, storage, tmp_path, monkeypatch
):
    archive_port, _, research_port, research = two_destinations
    config_import(config(archive_port, research_port))
    _, monday = synthetic_study(tmp_path / "monday", count=1, patient_id="P-1")
    _, tuesday = synthetic_study(tmp_path / "tuesday", count=1, patient_id="P-1")
    _, stranger = synthetic_study(tmp_path / "stranger", count=1, patient_id="P-2")
    for paths in (monday, tuesday, stranger):
        assert route_and_send(storage, paths) == {"archive": "delivered", "research": "delivered"}
    by_source = {ds.SOPInstanceUID: ds for ds in received(research)}
    assert len(by_source) == 3
    ids = sorted(ds.PatientID for ds in by_source.values())
    assert len(set(ids)) == 2 and ids.count(ids[0]) in (1, 2)  # P-1 twice, P-2 once
    p1 = engine.patient_pseudonym("P-1", SECRET.encode())
    assert ids.count(p1) == 2

    # Another secret: another pseudonym for the same patient.
    shutil.rmtree(research)
    research.mkdir()
    monkeypatch.setenv("ROUTER_TEST_SECRET", OTHER_SECRET)
    _, wednesday = synthetic_study(tmp_path / "wednesday", count=1, patient_id="P-1")
    assert route_and_send(storage, wednesday)["research"] == "delivered"
    [other] = received(research)
    assert other.PatientID == engine.patient_pseudonym("P-1", OTHER_SECRET.encode()) != p1


def test_a_patient_missing_from_the_pseudonym_table_is_held_for_that_destination_only(
    two_destinations, storage, tmp_path, django_user_model
):
    django_user_model.objects.create(username="ops", is_staff=True)
    archive_port, archive, research_port, research = two_destinations
    config_import(
        config(archive_port, research_port).replace("secret: env:", "pseudonym_table: true\n    secret: env:")
    )
    profile = TransformProfile.objects.get(name="research")
    pseudonyms_import(profile=profile, text="patient_id,pseudonym\nP-1,RESEARCH-0001\n")
    _, known = synthetic_study(tmp_path / "known", count=2, patient_id="P-1")
    _, unknown = synthetic_study(tmp_path / "unknown", count=2, patient_id="P-9")

    assert route_and_send(storage, known) == {"archive": "delivered", "research": "delivered"}
    assert {ds.PatientID for ds in received(research)} == {"RESEARCH-0001"}
    assert route_and_send(storage, unknown) == {"archive": "delivered", "research": "held"}

    assert len(list(archive.iterdir())) == 4  # the other destination got everything
    assert len(list(research.iterdir())) == 2  # nothing of the unknown patient, masked or not
    held = DeliveryItem.objects.filter(state=DeliveryItem.State.HELD)
    assert held.count() == 2
    assert all("no pseudonym for this patient" in reason for reason in held.values_list("error", flat=True))
    assert "P-9" not in held.first().error
    delivery = held.first().delivery
    assert delivery.state == Delivery.State.HELD and "no pseudonym" in delivery.last_error

    # The table mended, an operator's retry sends exactly what was held.
    pseudonyms_import(profile=profile, text="P-9,RESEARCH-0009\n")
    assert delivery_retry(delivery_id=delivery.pk)
    assert delivery_send(delivery_id=delivery.pk) == "delivered"
    assert {ds.PatientID for ds in received(research)} == {"RESEARCH-0001", "RESEARCH-0009"}


def test_a_burned_in_ultrasound_is_held_for_the_deidentifying_destination(two_destinations, storage, tmp_path):
    archive_port, archive, research_port, research = two_destinations
    config_import(config(archive_port, research_port))
    _, ultrasound = synthetic_study(tmp_path / "us", count=1, modality="US", sop_class_uid=UltrasoundImageStorage)

    assert route_and_send(storage, ultrasound) == {"archive": "delivered", "research": "held"}

    assert len(list(archive.iterdir())) == 1 and not list(research.iterdir())
    [item] = DeliveryItem.objects.filter(state=DeliveryItem.State.HELD)
    assert "burned-in" in item.error or "Ultrasound" in item.error, item.error


def test_a_coercion_profile_prefixes_the_accession_and_sets_the_institution(two_destinations, storage, tmp_path):
    archive_port, archive, research_port, research = two_destinations
    coercion = """
  - name: north-for-reading
    operations:
      - {op: prefix, tag: AccessionNumber, value: "N-"}
      - {op: set, tag: InstitutionName, value: "North Hospital"}
      - {op: set, tag: StudyDescription, value: "{InstitutionName} {Modality}"}
"""
    config_import(config(archive_port, research_port, research_gets="north-for-reading", more=coercion))
    _, paths = synthetic_study(tmp_path / "north", count=2)
    accession = dcmread(paths[0]).AccessionNumber

    assert route_and_send(storage, paths) == {"archive": "delivered", "research": "delivered"}

    for ds in received(research):
        assert ds.AccessionNumber == f"N-{accession}"
        assert ds.InstitutionName == "North Hospital"
        assert ds.StudyDescription == "North Hospital CT"
        assert ds.PatientName == "Doe^Jane"  # coercion only: nothing else changed
    for ds in received(archive):
        assert ds.AccessionNumber == accession
