import pytest
from pydicom import dcmread

from apps.studies.models import Instance, QualityAssessment, ReceivedInstance, Series, Stage, Study
from apps.studies.services import study_check, study_classify, study_persist, study_register

from ..support.dicom import synthetic_study
from ..support.pipeline import receive


@pytest.fixture
def study_files(tmp_path):
    return synthetic_study(tmp_path / "in", count=3, body_part="HEAD", priority="STAT")


pytestmark = pytest.mark.django_db


def test_persist_creates_study_series_and_instances_with_their_header(storage, study_files):
    uid, paths = study_files
    for path in paths:
        receive(storage, path)
    study = study_register(study_instance_uid=uid)
    assert study_persist(study_id=study.pk) == 3
    study.refresh_from_db()
    assert (study.stage, study.num_instances, study.num_series) == (Stage.PERSISTED, 3, 1)
    assert (study.modality, study.body_part, study.requested_priority) == ("CT", "HEAD", "STAT")
    assert study.calling_ae_title == "MODALITY"
    assert study.total_size == sum(p.stat().st_size for p in paths)
    assert Series.objects.get().num_instances == 3
    assert all(len(i.sha256) == 64 for i in Instance.objects.all())


def test_persist_twice_changes_nothing(storage, study_files):
    uid, paths = study_files
    for path in paths:
        receive(storage, path)
    study = study_register(study_instance_uid=uid)
    study_persist(study_id=study.pk)
    assert study_persist(study_id=study.pk) == 0
    assert Instance.objects.count() == 3


def test_an_unreadable_file_is_quarantined_with_its_reason_and_the_rest_goes_on(storage, study_files):
    uid, paths = study_files
    for path in paths:
        receive(storage, path)
    broken = ReceivedInstance.objects.order_by("id").first()
    (storage / broken.path).write_bytes(b"not dicom at all")
    study = study_register(study_instance_uid=uid)
    assert study_persist(study_id=study.pk) == 2
    broken.refresh_from_db()
    assert broken.state == ReceivedInstance.State.QUARANTINED
    assert broken.error


def test_a_late_instance_sets_the_study_back_so_every_step_sees_it(storage, tmp_path, default_mapping):
    uid, paths = synthetic_study(tmp_path / "in", count=2)
    receive(storage, paths[0])
    study = study_register(study_instance_uid=uid)
    study_persist(study_id=study.pk)
    study_classify(study_id=study.pk)
    study_check(study_id=study.pk)
    assert Study.objects.get().stage == Stage.CHECKED
    receive(storage, paths[1])
    study_persist(study_id=study.pk)
    study.refresh_from_db()
    assert (study.stage, study.num_instances) == (Stage.PERSISTED, 2)


def test_classify_and_check_record_their_results(storage, study_files, default_mapping):
    uid, paths = study_files
    for path in paths:
        receive(storage, path)
    study = study_register(study_instance_uid=uid)
    study_persist(study_id=study.pk)
    study_classify(study_id=study.pk)
    study_check(study_id=study.pk)
    study.refresh_from_db()
    assert (study.specialty, study.priority, study.stage) == ("neuroradiology", "STAT", Stage.CHECKED)
    assert study.classification["priority"] == "RequestedProcedurePriority STAT"
    assert QualityAssessment.objects.get(study=study).verdict == "passed"


def test_a_study_with_two_patients_is_flagged_not_dropped(storage, tmp_path, default_mapping):
    uid, paths = synthetic_study(tmp_path / "a", count=1, patient_name="Doe^Jane")
    _, other = synthetic_study(tmp_path / "b", count=1, patient_name="Roe^Richard", study_uid=uid)
    for path in paths + other:
        receive(storage, path)
    study = study_register(study_instance_uid=uid)
    study_persist(study_id=study.pk)
    study_classify(study_id=study.pk)
    study_check(study_id=study.pk)
    study.refresh_from_db()
    assert study.quality.verdict == "flagged"
    assert study.stage == Stage.CHECKED  # flagged studies go on


def test_steps_out_of_order_do_nothing(storage, study_files):
    uid, paths = study_files
    receive(storage, paths[0])
    study = study_register(study_instance_uid=uid)
    study_classify(study_id=study.pk)
    study_check(study_id=study.pk)
    assert Study.objects.get().stage == Stage.RECEIVED


def test_a_study_whose_every_instance_is_quarantined_is_rejected_with_the_reason(storage, tmp_path, default_mapping):
    """Nothing of it could be persisted (here: its series is another study's, as a header edited by hand
    leaves it): it is neither classified, routed nor assigned, and says why. A good instance later sets it
    back, as any new content does."""
    first_uid, first_paths = synthetic_study(tmp_path / "a", count=1)
    receive(storage, first_paths[0])
    study_persist(study_id=study_register(study_instance_uid=first_uid).pk)
    misfiled_uid, misfiled_paths = synthetic_study(tmp_path / "b", count=2)
    ds = dcmread(misfiled_paths[0])
    ds.SeriesInstanceUID = dcmread(first_paths[0]).SeriesInstanceUID
    ds.save_as(misfiled_paths[0])
    receive(storage, misfiled_paths[0])
    study = study_register(study_instance_uid=misfiled_uid)
    assert study_persist(study_id=study.pk) == 0
    study.refresh_from_db()
    assert study.stage == Stage.REJECTED
    assert study.stage_detail == "no instance could be persisted: 1 quarantined (series belongs to another study)"
    assert study_classify(study_id=study.pk) is None  # the chain stops here
    receive(storage, misfiled_paths[1])
    assert study_persist(study_id=study.pk) == 1
    study.refresh_from_db()
    assert (study.stage, study.num_instances) == (Stage.PERSISTED, 1)
