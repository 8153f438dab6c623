"""Prior fetch rows: started once per (study, rule, destination), claimed once, retried with the archive's
backoff when it cannot be reached, ended with a reason when there is nothing to ask."""

from datetime import timedelta

import pytest

from apps.configuration.services import config_export, config_import
from apps.core import clock
from apps.priors.models import PriorFetch, PriorRule
from apps.priors.services import prior_fetch_retry, prior_fetch_run, prior_fetches_due, priors_start
from apps.routing.models import Delivery, Destination
from apps.studies.models import Study

from ..support.processes import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def routed():
    """A CT study of a patient, routed to `reading`; a rule asking `archive` (nothing listens there)."""
    reading = Destination.objects.create(name="reading", ae_title="READING", host="127.0.0.1", port=free_port())
    archive = Destination.objects.create(
        name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=free_port(), connect_timeout=2, max_attempts=3
    )
    study = Study.objects.create(study_instance_uid="1.2.3", patient_id="P1", modality="CT", study_date="20240101")
    Delivery.objects.create(study=study, destination=reading)
    rule = PriorRule.objects.create(name="CT priors", archive=archive, modalities="CT,MR")
    return study, rule, reading, archive


def test_it_starts_one_fetch_per_rule_and_destination_once(routed):
    study, rule, reading, _ = routed
    other = Destination.objects.create(name="other", ae_title="OTHER", host="127.0.0.1", port=1)
    Delivery.objects.create(study=study, destination=other)
    PriorRule.objects.create(name="disabled", archive=rule.archive, enabled=False)
    PriorRule.objects.create(name="US only", archive=rule.archive, modalities="US")
    switched_off = Destination.objects.create(name="off", ae_title="OFF", host="127.0.0.1", port=1, enabled=False)
    PriorRule.objects.create(name="archive disabled", archive=switched_off)

    first = priors_start(study_id=study.pk)
    assert len(first) == 2
    assert set(PriorFetch.objects.values_list("rule__name", "destination__name")) == {
        ("CT priors", "reading"),
        ("CT priors", "other"),
    }
    assert priors_start(study_id=study.pk) == []  # the route step run again: nothing new
    assert PriorFetch.objects.count() == 2


def test_an_unreachable_archive_is_asked_again_after_its_backoff_then_the_fetch_fails(routed):
    study, rule, _, archive = routed
    (fetch_id,) = priors_start(study_id=study.pk)
    now = clock.now()
    assert prior_fetch_run(fetch_id=fetch_id, now=now) == "pending"
    fetch = PriorFetch.objects.get()
    assert fetch.attempts == 1 and "connect" in fetch.error
    assert now + timedelta(seconds=archive.retry_base_delay * 0.8) <= fetch.next_attempt_at
    assert prior_fetches_due(now=now) == []  # not due before its time
    later = fetch.next_attempt_at
    assert prior_fetches_due(now=later) == [fetch_id]
    assert prior_fetch_run(fetch_id=fetch_id, now=later) == "pending"
    assert prior_fetch_run(fetch_id=fetch_id, now=later) == "failed"  # the archive's max_attempts (3)
    fetch.refresh_from_db()
    assert fetch.state == "failed" and "after 3 attempts" in fetch.error
    assert prior_fetch_run(fetch_id=fetch_id) is None  # a failed fetch is not run by a stray message

    assert prior_fetch_retry(fetch_id=fetch_id)
    fetch.refresh_from_db()
    assert (fetch.state, fetch.attempts, fetch.error) == ("pending", 0, "")


def test_a_fetch_is_run_by_one_worker_only_and_one_left_running_is_given_back_after_the_lease(routed):
    study, *_ = routed
    (fetch_id,) = priors_start(study_id=study.pk)
    now = clock.now()
    PriorFetch.objects.filter(pk=fetch_id).update(state="running", claimed_at=now)
    assert prior_fetch_run(fetch_id=fetch_id) is None
    assert prior_fetches_due(now=now + timedelta(seconds=5), lease=10) == []
    assert prior_fetches_due(now=now + timedelta(seconds=11), lease=10) == [fetch_id]
    assert PriorFetch.objects.get().state == "pending"


@pytest.mark.parametrize(
    ("change", "state", "why"),
    [
        ({"patient_id": ""}, "done", "the study has no PatientID: nothing to ask for"),
        ({"patient_id": "P*"}, "done", "the PatientID holds C-FIND wildcard characters: not asked"),
    ],
)
def test_nothing_is_asked_for_a_study_without_a_usable_patient_id(routed, change, state, why):
    study, *_ = routed
    Study.objects.filter(pk=study.pk).update(**change)
    (fetch_id,) = priors_start(study_id=study.pk)
    assert prior_fetch_run(fetch_id=fetch_id) == state
    fetch = PriorFetch.objects.get()
    assert (fetch.detail, fetch.attempts) == (why, 1)


def test_a_study_routed_to_the_archive_itself_needs_no_priors_and_a_dicomweb_destination_gets_none(routed):
    study, rule, reading, archive = routed
    Delivery.objects.create(study=study, destination=archive)
    web = Destination.objects.create(
        name="web", protocol="dicomweb", ae_title="-", host="-", port=1, dicomweb_url="http://127.0.0.1:1/"
    )
    Delivery.objects.create(study=study, destination=web)
    for fetch_id in priors_start(study_id=study.pk):
        prior_fetch_run(fetch_id=fetch_id)
    results = {f.destination.name: (f.state, f.detail) for f in PriorFetch.objects.select_related("destination")}
    assert results["archive"] == ("done", "the destination is the archive: it holds the priors already")
    assert "web" not in results  # no AE title to move to: no fetch
    assert results["reading"][0] == "pending"  # the archive is not listening: asked again later


def test_prior_rules_travel_with_the_configuration_document(routed):
    exported = config_export()
    assert "prior_rules:" in exported
    PriorRule.objects.all().delete()
    report = config_import(exported)
    assert report.created == ["prior rule CT priors"]
    rule = PriorRule.objects.get()
    assert (rule.archive.name, rule.match, rule.max_age_years, rule.max_count, rule.modalities) == (
        "archive",
        "modality",
        5,
        2,
        "CT,MR",
    )
    assert not config_import(config_export()).changed


def test_a_prior_rule_must_name_a_known_archive():
    from apps.configuration.services import ConfigError

    with pytest.raises(ConfigError, match="unknown archive destination nowhere"):
        config_import("prior_rules:\n  - {name: x, archive: nowhere}\n")
