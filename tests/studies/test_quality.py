"""QC over real files and synthetic studies: every shipped image gets an assessment, bad images are
flagged, a held study waits for a reviewer and is then routed exactly once."""

import shutil

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from apps.routing.models import Delivery, Destination, RoutingDecision, RoutingRule, RuleCriterion
from apps.routing.services import study_route
from apps.studies.models import QcCheck, QualityAssessment, ReceivedInstance, Stage, Study
from apps.studies.services import study_check, study_reject, study_release

from ..support.dicom import shipped, synthetic_study
from ..support.pipeline import receive, receive_study, run_steps

pytestmark = pytest.mark.django_db

IMAGES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPGExtended.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle.dcm",
    "JPEG-lossy.dcm",  # libjpeg cannot decode it: the assessment says so
]


@pytest.mark.parametrize("name", IMAGES)
def test_every_shipped_image_gets_an_assessment_decoded_or_with_a_reason(storage, tmp_path, default_mapping, name):
    copy = tmp_path / name
    shutil.copy(get_testdata_file(name), copy)
    study = Study.objects.get(pk=receive_study(storage, [copy]))
    run_steps(study.pk, until="check")
    assessment = QualityAssessment.objects.get(study=study)
    pixel_entries = [c for c in assessment.checks if "series" in c]
    assert pixel_entries, "no pixel check ran or was recorded as not run"
    not_run = [c for c in pixel_entries if c.get("not_run")]
    if name == "JPEG-lossy.dcm":
        assert not_run and not_run[0]["detail"].startswith("not decoded")
    else:
        assert not not_run, not_run
        assert {c["check"] for c in pixel_entries} >= {"std", "saturation"}


def image_study(tmp_path, pixels: np.ndarray, *, modality="DX", count=1, patient="Doe^Jane", study_uid=None):
    """A synthetic uncompressed study whose every instance carries `pixels` (uint16)."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for _ in range(count):
        ds = dcmread(shipped("ct"))
        del ds[0xFFFCFFFC]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.PatientName, ds.BodyPartExamined = modality, patient, "CHEST"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if keyword in ds:
                del ds[keyword]
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def normal_image() -> np.ndarray:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:128, 0:128]
    anatomy = 2000 * np.exp(-(((x - 64) ** 2 + (y - 64) ** 2) / (2 * 30**2)))
    return np.clip(300 + anatomy + rng.normal(0, 20, (128, 128)), 0, 4095)


def failed_checks(storage, tmp_path, pixels, **kwargs) -> set[str]:
    _, paths = image_study(tmp_path, pixels, **kwargs)
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="check")
    assessment = QualityAssessment.objects.get(study_id=study_id)
    return {c["check"] for c in assessment.failed}


def test_a_normal_image_passes(storage, tmp_path, default_mapping):
    assert failed_checks(storage, tmp_path, normal_image()) == set()


def test_a_blank_image_is_flagged(storage, tmp_path, default_mapping):
    assert "std" in failed_checks(storage, tmp_path, np.full((128, 128), 512))


def test_a_saturated_image_is_flagged(storage, tmp_path, default_mapping):
    image = normal_image()
    image[:, :40] = 4095
    assert "saturation" in failed_checks(storage, tmp_path, image)


def test_a_study_with_two_patients_is_flagged_and_goes_on(storage, tmp_path, default_mapping):
    uid, first = image_study(tmp_path / "a", normal_image(), patient="Doe^Jane")
    _, second = image_study(tmp_path / "b", normal_image(), patient="Roe^Richard", study_uid=uid)
    study_id = receive_study(storage, first + second)
    run_steps(study_id, until="check")
    study = Study.objects.get(pk=study_id)
    assert (study.quality.verdict, study.stage) == ("flagged", Stage.CHECKED)
    assert {c["check"] for c in study.quality.failed} == {"one_patient"}


def test_an_instance_too_large_to_decode_is_not_decoded_and_says_so(storage, tmp_path, default_mapping, settings):
    settings.QC_MAX_DECODE_BYTES = 1000
    _, paths = image_study(tmp_path, normal_image())
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="check")
    [entry] = [c for c in QualityAssessment.objects.get(study_id=study_id).checks if c.get("not_run")]
    assert entry["detail"] == "not decoded: 32768 bytes would exceed the 1000 limit"


@pytest.fixture
def held_study(storage, tmp_path, default_mapping):
    QcCheck.objects.filter(name="std").update(policy=QcCheck.Policy.HOLD)
    destination = Destination.objects.create(name="pacs", ae_title="PEER", host="127.0.0.1", port=1)
    rule = RoutingRule.objects.create(name="all", priority=1)
    RuleCriterion.objects.create(rule=rule, attribute="modality", operator="present")
    rule.destinations.add(destination)
    _, paths = image_study(tmp_path, np.full((64, 64), 100))
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="notify")  # the whole chain: it must stop at the hold
    return Study.objects.get(pk=study_id)


def test_a_held_study_is_not_routed_until_released_then_routed_exactly_once(held_study):
    assert (held_study.stage, held_study.quality.verdict) == (Stage.HELD, "held")
    assert held_study.stage_detail == "held for QC: std"
    assert not RoutingDecision.objects.exists()
    assert study_route(study_id=held_study.pk) == []  # a route message for a held study does nothing
    assert study_release(study_id=held_study.pk, user="reviewer")
    assert not study_release(study_id=held_study.pk, user="reviewer")  # a second release does nothing
    run_steps(held_study.pk, until="notify")
    held_study.refresh_from_db()
    assert held_study.quality.verdict == "released" and held_study.quality.decided_by == "reviewer"
    assert RoutingDecision.objects.count() == 1 and Delivery.objects.count() == 1
    assert held_study.stage in (Stage.UNASSIGNED, Stage.NOTIFIED)


def test_a_released_study_is_not_held_again_when_late_instances_arrive(held_study, storage, tmp_path):
    study_release(study_id=held_study.pk, user="reviewer")
    run_steps(held_study.pk, until="route")
    _, late = image_study(tmp_path / "late", np.full((64, 64), 100), study_uid=held_study.study_instance_uid)
    receive(storage, late[0])
    run_steps(held_study.pk, until="route")
    held_study.refresh_from_db()
    assert held_study.quality.verdict == "released"
    assert held_study.stage == Stage.ROUTED
    assert Delivery.objects.get().items.count() == 2


def test_a_rejected_study_is_kept_and_never_routed(held_study):
    assert study_reject(study_id=held_study.pk, user="reviewer")
    run_steps(held_study.pk, until="notify")
    held_study.refresh_from_db()
    assert held_study.stage == Stage.REJECTED
    assert not RoutingDecision.objects.exists()


def test_a_later_copy_with_other_content_is_counted_and_flagged(storage, tmp_path, default_mapping):
    import shutil

    from apps.studies.services import received_instance_second_copy

    _, paths = synthetic_study(tmp_path / "in", count=1)
    study_id = receive_study(storage, paths)
    changed = dcmread(paths[0])
    changed.StudyDescription = "edited on the modality"
    changed.save_as(storage / "instances" / "other.dcm")
    shutil.copy(paths[0], storage / "instances" / "same.dcm")
    uid = changed.SOPInstanceUID
    # As the SCP calls it for a SOP Instance UID already received: the kept copy stays, the new one goes.
    assert not received_instance_second_copy(sop_instance_uid=uid, path="instances/other.dcm")
    assert not received_instance_second_copy(sop_instance_uid=uid, path="instances/same.dcm")
    assert ReceivedInstance.objects.get(sop_instance_uid=uid).conflicting_copies == 1
    run_steps(study_id, until="check")
    assert "same_uid_different_content" in {c["check"] for c in QualityAssessment.objects.get().failed}


def test_held_is_what_study_check_returns(storage, tmp_path, default_mapping):
    QcCheck.objects.filter(name="one_patient").update(policy=QcCheck.Policy.HOLD)
    uid, first = image_study(tmp_path / "a", normal_image(), patient="A^A")
    _, second = image_study(tmp_path / "b", normal_image(), patient="B^B", study_uid=uid)
    study_id = receive_study(storage, first + second)
    run_steps(study_id, until="classify")
    assert study_check(study_id=study_id) == "held"
    assert study_check(study_id=study_id) is None  # a second message finds the study held


def test_the_held_list_in_admin_shows_the_hold_and_releases_it(held_study, client):
    from django.contrib.auth.models import User
    from django.urls import reverse

    client.force_login(User.objects.create_superuser("reviewer", "r@example.org", "pw"))
    url = reverse("admin:studies_heldstudy_changelist")
    assert "held for QC: std" in client.get(url).content.decode()
    client.post(url, {"action": "release", "_selected_action": [held_study.pk]})
    held_study.refresh_from_db()
    assert held_study.stage == Stage.CHECKED  # the admin also enqueued the route step
    assert held_study.quality.decided_by == "reviewer"
    assert "held for QC: std" not in client.get(url).content.decode()
