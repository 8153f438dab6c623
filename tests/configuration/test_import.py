import re

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


FULL = """
destinations:
  - name: night-pacs
    ae_title: NIGHT
    host: 10.0.0.9
    port: 104
    max_associations: 4
    alternate: backup
    alternate_after: 600
    windows:
      - {days: [mon, tue, wed, thu, fri], start: "19:00", end: "07:00", timezone: Europe/Paris}
      - {days: [sat, sun], start: "00:00", end: "23:59", timezone: Europe/Paris}
  - {name: backup, ae_title: BACKUP, host: 10.0.0.10, port: 104}
rules:
  - name: female MR at night
    priority: 50
    exclusive: true
    match: {modality: MR, PatientSex: F}
    criteria:
      - {attribute: sop_class, operator: not_in, value: "1.2.840.10008.5.1.4.1.1.88.11"}
    windows: [{days: [mon, tue, wed, thu, fri], start: "20:00", end: "06:00", timezone: America/New_York}]
    destinations: [night-pacs]
"""


def test_windows_alternates_and_keyword_criteria_import_and_export_unchanged():
    config_import(FULL)
    night = Destination.objects.get(name="night-pacs")
    assert (night.alternate.name, night.alternate_after, night.max_associations) == ("backup", 600, 4)
    assert [str(w) for w in night.windows.all()] == [
        "mon,tue,wed,thu,fri 19:00-07:00 Europe/Paris",
        "sat,sun 00:00-23:59 Europe/Paris",
    ]
    rule = RoutingRule.objects.get()
    assert [(c.attribute, c.keyword, c.operator, c.value) for c in rule.criteria.all()] == [
        ("modality", "", "equals", "MR"),
        ("keyword", "PatientSex", "equals", "F"),
        ("sop_class", "", "not_in", "1.2.840.10008.5.1.4.1.1.88.11"),
    ]
    assert rule.windows.count() == 1
    assert not config_import(FULL).changed
    assert not config_import(config_export()).changed


def test_a_changed_window_updates_its_owner_once():
    config_import(FULL)
    report = config_import(FULL.replace('start: "20:00"', 'start: "21:00"'))
    assert report.updated == ["rule female MR at night"]


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (FULL.replace("alternate: backup", "alternate: nowhere"), "destinations[0] (night-pacs): alternate 'nowhere'"),
        (FULL.replace("alternate: backup", "alternate: night-pacs"), "is not another destination"),
        (FULL.replace("{attribute: sop_class", "{attribute: keyword, keyword: NotAKeyword"), "is not a DICOM keyword"),
        (FULL.replace("timezone: America/New_York", "timezone: Nowhere/City"), "timezone"),
    ],
)
def test_bad_windows_alternates_and_keywords_are_refused(broken, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_import(broken)
    assert not Destination.objects.exists()


TLS = """
callers:
  - {ae_title: CT1, host: 10.0.0.5, tls: {ca: /etc/router/tls/modalities-ca.pem, subject: ct1}}
  - {ae_title: MR1, tls: {required: true}}
  - {ae_title: US1}
destinations:
  - name: remote-pacs
    ae_title: PACS
    host: pacs.example.org
    port: 2762
    tls: {ca: /etc/router/tls/pacs-ca.pem, cert: /etc/router/tls/router.crt, key: /etc/router/tls/router.key}
  - {name: lab, ae_title: LAB, host: 10.0.0.9, port: 104, tls: {verify: false}}
  - {name: plain, ae_title: PLAIN, host: 10.0.0.8, port: 104}
"""


def test_tls_terms_of_callers_and_destinations_import_and_export_unchanged():
    from apps.ingest.models import AllowedCaller

    config_import(TLS)
    ct1 = AllowedCaller.objects.get(ae_title="CT1")
    assert (ct1.client_ca_file, ct1.client_subject, ct1.tls_required) == (
        "/etc/router/tls/modalities-ca.pem",
        "ct1",
        True,
    )
    assert AllowedCaller.objects.get(ae_title="MR1").tls_required
    assert not AllowedCaller.objects.get(ae_title="US1").tls_required
    pacs = Destination.objects.get(name="remote-pacs")
    assert (pacs.tls_enabled, pacs.tls_cert_file, pacs.tls_verify) == (True, "/etc/router/tls/router.crt", True)
    assert not Destination.objects.get(name="lab").tls_verify
    assert not Destination.objects.get(name="plain").tls_enabled
    exported = config_export()
    assert "BEGIN" not in exported  # paths, never key or certificate contents
    assert not config_import(exported).changed
    assert not config_import(TLS).changed


def test_what_callers_may_ask_imports_and_exports_unchanged():
    from apps.ingest.models import AllowedCaller

    document = """
callers:
  - {ae_title: WS1, may: [query]}
  - {ae_title: PACS, host: 10.0.0.9, may: [query, retrieve]}
  - {ae_title: CT1}
"""
    config_import(document)
    grants = {c.ae_title: (c.may_query, c.may_retrieve) for c in AllowedCaller.objects.all()}
    assert grants == {"WS1": (True, False), "PACS": (True, True), "CT1": (False, False)}
    exported = config_export()
    assert "  may:\n  - query\n  - retrieve\n" in exported
    assert not config_import(exported).changed
    with pytest.raises(ConfigError, match=re.escape("caller WS1: may: a list of query and retrieve")):
        config_import(document.replace("may: [query]", "may: [delete]"))


def test_a_destination_paused_for_its_tls_is_resumed_when_its_tls_changes():
    config_import(TLS)
    Destination.objects.filter(name="remote-pacs").update(config_error="TLS: certificate has expired")
    config_import(TLS.replace("pacs-ca.pem", "pacs-ca-2026.pem"))
    assert Destination.objects.get(name="remote-pacs").config_error == ""


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (TLS.replace("subject: ct1", "subjekt: ct1"), "callers[0] (CT1): unknown key(s) subjekt"),
        (TLS.replace("tls: {verify: false}", "tls: yes"), "destinations[1] (lab): tls must be a mapping"),
        (TLS.replace("key: /etc/router/tls/router.key", "verify: true"), "A client certificate needs its key"),
    ],
)
def test_bad_tls_terms_are_refused(broken, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_import(broken)


TRANSFORMS = """
transforms:
  - name: north-prefix
    operations:
      - {op: prefix, tag: AccessionNumber, value: "N-"}
      - {op: set, tag: InstitutionName, value: "{InstitutionName} North"}
      - {op: replace, tag: StudyDescription, pattern: "(?i)^ct ", value: "CT: "}
  - name: research
    deidentify: true
    options: [retain_longitudinal_modified_dates, clean_descriptors]
    secret: env:ROUTER_SECRET_RESEARCH
    pseudonym_table: true
destinations:
  - {name: reading, ae_title: READ, host: 10.0.0.1, port: 104}
  - {name: archive, ae_title: ARCH, host: 10.0.0.2, port: 104, transform: research}
rules:
  - name: north to reading
    match: {calling_ae: CT_NORTH}
    destinations: [reading, archive]
    transforms: {reading: north-prefix}
"""


def test_transform_profiles_import_attach_and_export_unchanged():
    from apps.routing.models import RuleTransform
    from apps.transforms.models import TransformProfile

    config_import(TRANSFORMS)
    research = TransformProfile.objects.get(name="research")
    assert research.deidentify and research.use_pseudonym_table and research.secret == "env:ROUTER_SECRET_RESEARCH"
    assert Destination.objects.get(name="archive").transform == research
    [chosen] = RuleTransform.objects.all()
    assert (chosen.destination.name, chosen.profile.name) == ("reading", "north-prefix")
    exported = config_export()
    assert "ROUTER_SECRET_RESEARCH" in exported  # the reference, never a secret
    assert not config_import(exported).changed
    assert not config_import(TRANSFORMS).changed


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (TRANSFORMS.replace("tag: AccessionNumber", "tag: AccesionNumber"), "transforms[0] (north-prefix): "),
        (TRANSFORMS.replace('pattern: "(?i)^ct "', 'pattern: "(unclosed"'), "transforms[0] (north-prefix): "),
        (TRANSFORMS.replace("{InstitutionName} North", "{InstitutionNam} North"), "transforms[0] (north-prefix): "),
        (TRANSFORMS.replace("clean_descriptors]", "clean_everything]"), "transforms[1] (research): "),
        (TRANSFORMS.replace("secret: env:", "secret: plain:"), "transforms[1] (research): secret"),
        (TRANSFORMS.replace("transform: research", "transform: nowhere"), "unknown transform 'nowhere'"),
        (TRANSFORMS.replace("{reading: north-prefix}", "{elsewhere: north-prefix}"), "not one of this rule's"),
    ],
    ids=["keyword", "regex", "template", "option", "secret", "destination-transform", "rule-transform"],
)
def test_a_bad_transform_profile_is_refused_at_import_with_the_entry_named(broken, message):
    from apps.transforms.models import TransformProfile

    with pytest.raises(ConfigError, match=re.escape(message)):
        config_import(broken)
    assert not TransformProfile.objects.exists()


def test_a_dicomweb_destination_imports_and_exports_unchanged():
    text = """
destinations:
  - name: cloud-pacs
    protocol: dicomweb
    dicomweb:
      url: https://pacs.example.org/dicom-web
      auth: bearer
      credentials: env:ROUTER_CLOUD_TOKEN
      batch_count: 20
      verify: true
    tls: {ca: /etc/router/tls/cloud-ca.pem}
"""
    config_import(text)
    cloud = Destination.objects.get(name="cloud-pacs")
    assert (cloud.protocol, cloud.host, cloud.port, cloud.batch_count) == ("dicomweb", "pacs.example.org", 443, 20)
    assert cloud.dicomweb_credentials == "env:ROUTER_CLOUD_TOKEN" and cloud.dicomweb_verify
    exported = config_export()
    assert not config_import(exported).changed and not config_import(text).changed
    with pytest.raises(ConfigError, match=re.escape("destinations[0] (cloud-pacs): dicomweb_url")):
        config_import(text.replace("url: https://", "url: ftp://"))


COMMITMENT = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: 104, storage_commitment: true, commitment_timeout: 120}
  - {name: web, protocol: dicomweb, dicomweb: {url: "http://127.0.0.1:8042/dicom-web"}, storage_commitment: true}
rules:
  - {name: CT, match: {modality: CT}, destinations: [pacs], assign_after_delivery: true}
"""


def test_storage_commitment_and_assign_after_delivery_import_export_and_are_refused_where_they_cannot_work():
    with pytest.raises(ConfigError, match="Storage commitment is a DICOM service"):
        config_import(COMMITMENT)
    config_import(COMMITMENT.replace(", storage_commitment: true}", "}"))
    pacs = Destination.objects.get(name="pacs")
    assert (pacs.storage_commitment, pacs.commitment_timeout) == (True, 120)
    assert RoutingRule.objects.get().assign_after_delivery
    exported = config_export()
    assert "storage_commitment: true" in exported and "assign_after_delivery: true" in exported
    assert not config_import(exported).changed
