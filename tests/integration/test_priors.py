"""Prior fetching on real peers: Orthanc as the archive holding earlier studies of the patient (and others),
dcmtk's storescp as the reading destination, the router's SCP and Celery workers in between."""

import pytest
from pydicom import dcmread

from apps.configuration.services import config_import
from apps.pipeline.reports import study_timeline
from apps.pipeline.selectors import study_status
from apps.priors.models import PriorFetch, PriorRule, PriorStudy
from apps.priors.services import prior_fetch_run, priors_start
from apps.reading.models import Assignment
from apps.routing.models import Delivery, Destination
from apps.studies.models import Study

from ..support.dicom import storescu, synthetic_study
from ..support.orthanc import Orthanc
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PATIENT = "PRIOR-PAT-1"
NEW_STUDY_DATE = "20040119"  # CT_small's own StudyDate, which synthetic studies keep

CONFIG = """
destinations:
  - {name: reading, ae_title: READING, host: 127.0.0.1, port: %(reading_port)d}
  - {name: archive, ae_title: %(archive_aet)s, host: 127.0.0.1, port: %(archive_port)d,
     retry_base_delay: 1, retry_max_delay: 2}
rules:
  - {name: CT to reading, priority: 10, match: {modality: CT}, destinations: [reading]}
prior_rules:
  - {name: CT priors, archive: archive, match: modality, max_age_years: 5, max_count: 2, modalities: [CT]}
radiologists:
  - username: achen
    name: A. Chen
    email: achen@example.org
    specialty: neuroradiology
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
"""


def earlier_study(folder, *, day: str, modality: str = "CT", body_part: str = "HEAD", patient_id: str = PATIENT):
    uid, paths = synthetic_study(folder, count=2, modality=modality, body_part=body_part, patient_id=patient_id)
    for path in paths:
        ds = dcmread(path)
        ds.StudyDate = day
        ds.save_as(path, enforce_file_format=True)
    return uid, paths


@pytest.fixture
def archive_with_priors(log_dir, tmp_path, storescp):
    """(archive, reading storescp folder, reading port, {name: study uid}): Orthanc knows the reading
    storescp as a modality (its C-MOVE destination) and holds the patient's earlier studies, relevant or not."""
    _, reading_port, reading_folder = storescp("READING")
    archive = Orthanc(
        tmp_path / "archive",
        log_dir=log_dir,
        ae_title="ARCHIVE",
        name="archive",
        extra={
            "DicomModalities": {"reading": ["READING", "127.0.0.1", reading_port]},
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
        },
    )
    studies = {
        "ct_2003": earlier_study(tmp_path / "p1", day="20030510"),
        "ct_2001": earlier_study(tmp_path / "p2", day="20011120"),
        "ct_2000": earlier_study(tmp_path / "p3", day="20000301"),  # relevant, but beyond the 2 newest
        "mr_2003": earlier_study(tmp_path / "p4", day="20030101", modality="MR"),  # another modality
        "ct_1995": earlier_study(tmp_path / "p5", day="19950101"),  # older than 5 years
        "other_patient": earlier_study(tmp_path / "p6", day="20030601", patient_id="SOMEONE-ELSE"),
    }
    for _, paths in studies.values():
        for path in paths:
            archive.post("/instances", path.read_bytes())
    assert archive.instance_count() == 12
    yield archive, reading_folder, reading_port, {name: uid for name, (uid, _) in studies.items()}
    archive.stop()


def configure(archive, reading_port) -> PriorRule:
    config_import(CONFIG % {"reading_port": reading_port, "archive_aet": "ARCHIVE", "archive_port": archive.dicom_port})
    return PriorRule.objects.get(name="CT priors", archive__name="archive")


def studies_in(folder) -> dict[str, int]:
    """Study Instance UID -> number of files storescp wrote for it."""
    found: dict[str, int] = {}
    for path in folder.iterdir():
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        found[uid] = found.get(uid, 0) + 1
    return found


def routed_and_read(uid: str) -> dict | None:
    status = study_status(study_instance_uid=uid)
    if status and status["stage"] == "notified" and all(d["state"] == "delivered" for d in status["deliveries"]):
        return status
    return None


def fetch_in(state: str):
    return PriorFetch.objects.filter(state=state).first()


def test_relevant_priors_reach_the_reading_destination_from_the_archive(
    start_scp, start_worker, archive_with_priors, tmp_path
):
    archive, reading_folder, reading_port, priors = archive_with_priors
    configure(archive, reading_port)
    _, port = start_scp()
    start_worker()
    uid, paths = synthetic_study(tmp_path / "modality", count=3, body_part="HEAD", patient_id=PATIENT)
    result = storescu(port, paths)
    assert result.returncode == 0, result.stderr

    status = wait_until(lambda: routed_and_read(uid), timeout=60, what="the new study to be routed and assigned")
    fetch = wait_until(lambda: fetch_in("done"), timeout=60, what="the prior fetch to finish")
    expected = {uid: 3, priors["ct_2003"]: 2, priors["ct_2001"]: 2}
    wait_until(lambda: studies_in(reading_folder) == expected, timeout=30, what="the priors at the destination")

    assert fetch.detail == "2 prior(s) moved"
    verdicts = {c["study_instance_uid"]: (c["chosen"], c["reason"]) for c in fetch.candidates}
    assert verdicts[priors["ct_2003"]] == (True, "same modality CT, 254 days old")
    assert verdicts[priors["ct_2001"]] == (True, "same modality CT, 2 years old")
    assert verdicts[priors["ct_2000"]] == (False, "same modality CT, 3 years old, but beyond the 2 newest relevant")
    assert verdicts[priors["mr_2003"]] == (False, "not the same modality (MR; this study CT)")
    assert verdicts[priors["ct_1995"]][1] == "same modality CT, but older than 5 year(s) (9 years old)"
    assert priors["other_patient"] not in verdicts

    # The priors went from the archive to the destination: the router holds none, and nobody reads them.
    assert Study.objects.count() == 1
    assert list(Assignment.objects.values_list("study__study_instance_uid", flat=True)) == [uid]
    assert status["assignment"]["username"] == "achen"

    timeline = [(what, detail) for _, what, detail in study_timeline(study_id=Study.objects.get().pk)]
    assert ("prior fetched", f"{priors['ct_2001']} from archive to reading (same modality CT, 2 years old)") in timeline
    assert (
        "prior fetched",
        f"{priors['ct_2003']} from archive to reading (same modality CT, 254 days old)",
    ) in timeline
    assert sum(1 for what, _ in timeline if what == "prior fetched") == 2

    # The same patient again: what the destination already has is not moved twice.
    second, second_paths = synthetic_study(tmp_path / "again", count=1, body_part="HEAD", patient_id=PATIENT)
    assert storescu(port, second_paths).returncode == 0
    wait_until(lambda: PriorFetch.objects.filter(state="done").count() == 2, timeout=60, what="the second fetch")
    again = PriorFetch.objects.get(study__study_instance_uid=second)
    assert sorted(again.priors.values_list("state", flat=True)) == ["already_there", "already_there"]
    wait_until(lambda: routed_and_read(second), timeout=30, what="the second study to be delivered")
    assert studies_in(reading_folder) == expected | {second: 1}


def test_an_archive_that_is_down_is_asked_again_later_and_the_study_goes_on_meanwhile(
    start_scp, start_worker, start_beat, archive_with_priors, tmp_path
):
    archive, reading_folder, reading_port, priors = archive_with_priors
    configure(archive, reading_port)
    archive.stop()
    _, port = start_scp()
    start_worker()
    uid, paths = synthetic_study(tmp_path / "modality", count=2, body_part="HEAD", patient_id=PATIENT)
    assert storescu(port, paths).returncode == 0

    wait_until(lambda: routed_and_read(uid), timeout=60, what="the new study to be routed and assigned anyway")
    fetch = wait_until(
        lambda: PriorFetch.objects.filter(state="pending", attempts__gte=1).exclude(error="").first(),
        timeout=60,
        what="the fetch to be put back for a retry",
    )
    assert "connect" in fetch.error
    assert Assignment.objects.filter(study__study_instance_uid=uid).count() == 1
    assert studies_in(reading_folder) == {uid: 2}
    timeline = [what for _, what, _ in study_timeline(study_id=fetch.study_id)]
    assert "prior fetch retry due" in timeline and "assigned" in timeline

    archive.start()
    start_beat()
    wait_until(lambda: fetch_in("done"), timeout=60, what="the fetch to be retried by Beat and finish")
    expected = {uid: 2, priors["ct_2003"]: 2, priors["ct_2001"]: 2}
    wait_until(lambda: studies_in(reading_folder) == expected, timeout=30, what="the priors at the destination")
    assert PriorStudy.objects.filter(state="moved").count() == 2
    assert PriorFetch.objects.get().attempts >= 2


def test_body_part_rules_and_an_archive_that_does_not_know_the_destination(archive_with_priors):
    """Run by the services directly (no worker): a rule by body part chooses the MR of the same head, from
    what the archive's series say; a destination the archive does not know fails the fetch with why."""
    archive, reading_folder, reading_port, priors = archive_with_priors
    rule = configure(archive, reading_port)
    PriorRule.objects.filter(pk=rule.pk).update(match="body_part")
    reading = Destination.objects.get(name="reading")
    stranger = Destination.objects.create(name="stranger", ae_title="STRANGER", host="127.0.0.1", port=reading_port)
    study = Study.objects.create(
        study_instance_uid="1.2.3.4", patient_id=PATIENT, modality="CT", body_part="HEAD", study_date="20040119"
    )
    Delivery.objects.create(study=study, destination=reading)
    Delivery.objects.create(study=study, destination=stranger)

    results = {}
    for fetch_id in priors_start(study_id=study.pk):
        prior_fetch_run(fetch_id=fetch_id)
        fetch = PriorFetch.objects.select_related("destination").get(pk=fetch_id)
        results[fetch.destination.name] = fetch

    moved = results["reading"].priors.order_by("study_date")
    assert results["reading"].state == "done"
    assert [(p.study_instance_uid, p.reason) for p in moved] == [
        (priors["mr_2003"], "same body part HEAD, 1 year old"),
        (priors["ct_2003"], "same body part HEAD, 254 days old"),
    ]
    expected = {priors["mr_2003"]: 2, priors["ct_2003"]: 2}
    wait_until(lambda: studies_in(reading_folder) == expected, timeout=30, what="the priors at the destination")

    failed = results["stranger"]
    assert failed.state == "failed" and failed.attempts == 1  # no retry mends it
    # Orthanc 1.10 answers a move destination it does not know with C000 (unable to process), not A801.
    assert failed.error.startswith("C-MOVE status 0xC000: 0 sent, 0 failed")
    assert "does the archive know the move destination STRANGER" in failed.error
    assert list(failed.priors.values_list("state", flat=True)) == ["failed", "failed"]
    timeline = [(what, detail) for _, what, detail in study_timeline(study_id=study.pk)]
    assert ("prior fetch failed", f"from archive to stranger: {failed.error[:120]}") in timeline
