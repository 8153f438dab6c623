"""Viewer links of destinations: the template's placeholders, its validation, the first delivered destination
with one, and the template in the configuration document."""

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.configuration.services import ConfigError, config_export, config_import
from apps.routing.models import Delivery, Destination
from apps.routing.viewer import viewer_links, viewer_template_errors, viewer_url_render
from apps.studies.models import Study

OHIF = "https://viewer.example.org/viewer?StudyInstanceUIDs={StudyInstanceUID}"


def test_it_fills_both_placeholders_percent_encoded():
    url = viewer_url_render(
        "https://pacs.example.org/app/{AccessionNumber}/study/{StudyInstanceUID}",
        study_instance_uid="1.2.840.1",
        accession_number="A&B/7 x",
    )
    assert url == "https://pacs.example.org/app/A%26B%2F7%20x/study/1.2.840.1"


def test_it_gives_no_link_without_a_template_or_without_the_accession_it_needs():
    assert viewer_url_render("", study_instance_uid="1.2", accession_number="A1") is None
    assert (
        viewer_url_render("https://v.example.org/{AccessionNumber}", study_instance_uid="1.2", accession_number="")
        is None
    )
    assert viewer_url_render(OHIF, study_instance_uid="1.2", accession_number="") == OHIF.replace(
        "{StudyInstanceUID}", "1.2"
    )


def test_format_syntax_is_not_interpreted():
    # str.format would read attributes: the template is plain substitution of two names.
    assert viewer_template_errors("https://v.example.org/{StudyInstanceUID.__class__}")
    assert viewer_template_errors("https://v.example.org/{0}/{StudyInstanceUID}")


@pytest.mark.parametrize(
    "template, error",
    [
        ("javascript:alert(1)//{StudyInstanceUID}", "http:// or https://"),
        ("/viewer/{StudyInstanceUID}", "http:// or https://"),
        ("https://viewer.example.org/", "needs {StudyInstanceUID} or {AccessionNumber}"),
        ("https://v.example.org/{PatientID}", "unknown placeholder(s) {PatientID}"),
        ("https://v.example.org/{StudyInstanceUID", "unbalanced brace"),
        ("https://{AccessionNumber}.example.org/", "placeholder in the host"),
    ],
)
def test_it_refuses_templates_that_would_not_work_or_would_leak(template, error):
    assert any(error in e for e in viewer_template_errors(template)), viewer_template_errors(template)


def test_good_templates_pass():
    assert viewer_template_errors("") == []
    assert viewer_template_errors(OHIF) == []
    assert (
        viewer_template_errors("http://orthanc:8042/ui/app/#/filtered-studies?AccessionNumber={AccessionNumber}") == []
    )


@pytest.mark.django_db
def test_a_destination_with_a_bad_template_does_not_validate():
    destination = Destination(name="pacs", ae_title="PACS", host="h", port=104, viewer_url_template="ftp://x/{X}")
    with pytest.raises(ValidationError) as raised:
        destination.full_clean()
    assert "viewer_url_template" in raised.value.message_dict


@pytest.mark.django_db
def test_the_first_delivered_destination_with_a_template_gives_the_link():
    study = Study.objects.create(study_instance_uid="1.2.3", accession_number="A7")
    other = Study.objects.create(study_instance_uid="1.2.4")
    plain = Destination.objects.create(name="archive", ae_title="ARCH", host="h", port=104)
    late = Destination.objects.create(name="late", ae_title="LATE", host="h", port=104, viewer_url_template=OHIF)
    early = Destination.objects.create(
        name="early",
        ae_title="EARLY",
        host="h",
        port=104,
        viewer_url_template="https://e.example.org/{AccessionNumber}",
    )
    pending = Destination.objects.create(name="pending", ae_title="PEND", host="h", port=104, viewer_url_template=OHIF)
    now = timezone.now()
    Delivery.objects.create(
        study=study, destination=plain, state="delivered", delivered_at=now - timezone.timedelta(minutes=9)
    )
    Delivery.objects.create(study=study, destination=late, state="delivered", delivered_at=now)
    Delivery.objects.create(
        study=study, destination=early, state="delivered", delivered_at=now - timezone.timedelta(minutes=1)
    )
    Delivery.objects.create(study=other, destination=pending, state="pending")
    assert viewer_links(study_ids=[study.pk, other.pk]) == {study.pk: "https://e.example.org/A7"}


@pytest.mark.django_db
def test_the_template_is_in_the_configuration_document():
    document = f"""
destinations:
  - {{name: pacs, ae_title: PACS, host: 127.0.0.1, port: 104, viewer_url_template: "{OHIF}"}}
  - {{name: archive, ae_title: ARCH, host: 127.0.0.1, port: 105}}
"""
    config_import(document)
    assert Destination.objects.get(name="pacs").viewer_url_template == OHIF
    exported = config_export()
    assert exported.count("viewer_url_template") == 1  # a destination without one is written as before
    assert not config_import(exported).changed
    with pytest.raises(ConfigError, match="viewer_url_template"):
        config_import(document.replace("{StudyInstanceUID}", "{PatientName}"))
