import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.configuration.services import ConfigError, config_export, config_import
from apps.reading.models import Radiologist, Shift
from apps.routing.models import Destination, RoutingRule
from apps.studies.models import SpecialtyMapping

pytestmark = pytest.mark.django_db

ISSUE_EXAMPLE = """
destinations:
  - {name: neuro-pacs, ae_title: NEURO_PACS, host: 127.0.0.1, port: 11113}
rules:
  - name: CT head to neuro
    priority: 200
    match: {modality: CT, body_part: HEAD}
    destinations: [neuro-pacs]
radiologists:
  - username: achen
    name: A. Chen
    email: achen@example.org
    specialty: neuroradiology
    shifts:
      - {days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}
"""


def test_the_example_from_the_documentation_imports():
    report = config_import(ISSUE_EXAMPLE)
    assert len(report.created) == 3
    rule = RoutingRule.objects.get()
    assert [(c.attribute, c.operator, c.value) for c in rule.criteria.all()] == [
        ("modality", "equals", "CT"),
        ("body_part", "equals", "HEAD"),
    ]
    assert list(rule.destinations.values_list("name", flat=True)) == ["neuro-pacs"]
    chen = Radiologist.objects.get()
    assert (chen.user.username, chen.user.email, chen.display_name) == ("achen", "achen@example.org", "A. Chen")
    assert Shift.objects.get().weekdays == "mon,tue,wed,thu,fri,sat,sun"


def test_importing_the_same_file_again_changes_nothing():
    config_import(ISSUE_EXAMPLE)
    report = config_import(ISSUE_EXAMPLE)
    assert not report.changed
    assert report.unchanged == 3


def test_an_export_imports_back_without_changes():
    config_import(ISSUE_EXAMPLE)
    exported = config_export()
    assert not config_import(exported).changed
    assert "neuro-pacs" in exported and "achen" in exported


def test_a_change_is_applied_and_reported():
    config_import(ISSUE_EXAMPLE)
    report = config_import(
        ISSUE_EXAMPLE.replace("port: 11113", "port: 11114").replace("priority: 200", "priority: 300")
    )
    assert report.updated == ["destination neuro-pacs", "rule CT head to neuro"]
    assert Destination.objects.get().port == 11114


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            ISSUE_EXAMPLE.replace("destinations: [neuro-pacs]", "destinations: [nowhere]"),
            "rules[0] (CT head to neuro): unknown destination(s) nowhere",
        ),
        (ISSUE_EXAMPLE.replace("port: 11113", "port: 99999"), "destinations[0] (neuro-pacs): port"),
        (ISSUE_EXAMPLE.replace("timezone: UTC", "timezone: Mars/Olympus"), "radiologists[0] (achen): timezone"),
        (ISSUE_EXAMPLE.replace("days: [mon,", "days: [moonday,"), "radiologists[0] (achen): weekdays"),
        (
            ISSUE_EXAMPLE.replace("match: {modality: CT, body_part: HEAD}", "match: {study_description: '('}"),
            "rules[0] (CT head to neuro): value: Not a valid regular expression",
        ),
        (ISSUE_EXAMPLE.replace("match: {modality: CT", "match: {colour: CT"), "rules[0] (CT head to neuro): attribute"),
        (ISSUE_EXAMPLE + "\nprinters: []\n", "unknown section(s): printers"),
        ("destinations: [{name: x, ae_title: X, host: h}]", "destinations[0] (x): missing key(s) port"),
        ("{", "not valid YAML"),
    ],
)
def test_a_bad_entry_is_refused_by_name_and_nothing_is_imported(broken, message):
    with pytest.raises(ConfigError) as error:
        config_import(broken)
    assert message in str(error.value)
    assert not Destination.objects.exists()
    assert not RoutingRule.objects.exists()
    assert not Radiologist.objects.exists()


def test_the_specialty_mapping_is_part_of_the_document(default_mapping):
    config_import("specialty_mapping:\n  - {modality: CT, body_parts: [HEAD, NECK], specialty: emergency_neuro}\n")
    assert [(m.modality, m.body_parts, m.specialty) for m in SpecialtyMapping.objects.all()] == [
        ("CT", "HEAD,NECK", "emergency_neuro")
    ]


def test_the_commands_read_and_write_files(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(ISSUE_EXAMPLE)
    call_command("importconfig", str(path))
    call_command("exportconfig")
    assert "CT head to neuro" in capsys.readouterr().out
    path.write_text(ISSUE_EXAMPLE.replace("[neuro-pacs]", "[nope]"))
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("importconfig", str(path))
