"""A configuration document that uses every key of every section, and the configuration's rows field by
field, to prove that an export imported on an empty database gives the same configuration.

Run as a module (`python -m tests.support.configuration`) it does the round trip on whatever DATABASE_URL
names (the embedded SQLite default in tests/configuration/test_versions.py) and prints the differences as
JSON: an empty list when there are none.
"""

import json

FULL = """
transforms:
  - name: north-prefix
    description: accession numbers of the north site
    operations:
      - {op: prefix, tag: AccessionNumber, value: "N-"}
      - {op: replace, tag: StudyDescription, pattern: "(?i)^ct ", value: "CT: "}
  - name: research
    deidentify: true
    options: [retain_longitudinal_modified_dates, clean_descriptors]
    allow_burned_in: true
    secret: env:ROUTER_SECRET_RESEARCH
    pseudonym_table: true
callers:
  - {ae_title: CT_NORTH, host: 10.0.0.5, enabled: true, description: north CT, max_associations: 12}
  - ae_title: CT_SOUTH
    tls: {required: true, ca: /etc/router/tls/modalities-ca.pem, subject: ct-south,
          sha256: "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB"}
  - {ae_title: READING_WS, may: [query, retrieve], enabled: false}
destinations:
  - name: neuro-pacs
    ae_title: NEURO_PACS
    host: 10.1.0.20
    port: 11112
    enabled: true
    max_attempts: 9
    retry_base_delay: 11
    retry_max_delay: 601
    connect_timeout: 12
    dimse_timeout: 31
    network_timeout: 61
    max_associations: 3
    alternate: backup-pacs
    alternate_after: 901
    retention_hours: 721
    storage_commitment: true
    commitment_timeout: 301
    transform: north-prefix
    windows:
      - {days: [mon, tue, wed, thu, fri], start: "19:00", end: "07:00", timezone: Europe/Paris}
    tls: {ca: /etc/router/tls/pacs-ca.pem, cert: /etc/router/tls/router.crt, key: /etc/router/tls/router.key,
          verify: false, check_hostname: true}
  - {name: backup-pacs, ae_title: BACKUP, host: 10.1.0.21, port: 104, enabled: false}
  - name: cloud-pacs
    protocol: dicomweb
    dicomweb: {url: "https://pacs.example.org/dicom-web", auth: bearer, credentials: "env:ROUTER_CLOUD_TOKEN",
               timeout: 61, batch_count: 11, batch_bytes: 1048577, verify: true}
    tls: {ca: /etc/router/tls/cloud-ca.pem}
rules:
  - name: CT head to neuro
    description: heads
    priority: 200
    enabled: true
    exclusive: true
    fallback: false
    forward_mode: on_receipt
    assign_after_delivery: true
    match: {modality: CT, body_part: [HEAD, BRAIN], study_description: "(?i)head", PatientSex: F}
    criteria:
      - {attribute: institution, operator: contains, value: North}
      - {attribute: keyword, keyword: Manufacturer, operator: regex, value: "^GE"}
    windows:
      - {days: [sat, sun], start: "00:00", end: "23:59", timezone: America/New_York}
    destinations: [neuro-pacs, cloud-pacs]
    transforms: {cloud-pacs: research}
  - {name: everything else, priority: 1, fallback: true, enabled: false, destinations: [backup-pacs]}
prior_rules:
  - {name: CT and MR priors, archive: backup-pacs, match: modality_or_body_part, max_age_years: 5, max_count: 3,
     modalities: [CT, MR], enabled: true, description: priors}
radiologists:
  - username: achen
    name: A. Chen
    email: achen@example.org
    specialty: neuroradiology
    subspecialty: head_and_neck
    status: online
    capacity: 21.5
    seniority: 12
    max_per_hour: 7
    shifts:
      - {days: [mon, tue, wed, thu, fri], start: "19:00", end: "07:00", timezone: America/New_York, sets_online: true}
      - {days: [sat], start: "08:00", end: "12:00", timezone: UTC}
    privileges:
      - {institution: North Hospital, expires_on: 2027-06-30}
      - {institution: South Clinic}
webhooks:
  - {name: ris, url: "https://ris.example.org/hook", secret: "env:ROUTER_RIS_HOOK",
     events: [stat_assigned, sla_ack_breached], enabled: true, phi_approved: true}
  - {name: pager, url: "https://pager.example.org/in", secret: "file:/etc/router/secrets/pager", enabled: false}
specialty_mapping:
  - {order: 5, modality: MR, body_parts: [HEAD], description_pattern: "\\\\bIAC\\\\b", specialty: neuroradiology,
     subspecialty: head_and_neck, enabled: true}
  - {order: 10, modality: MG, body_parts: [], specialty: breast_imaging}
priority_keywords:
  - {keyword: CODE STROKE, priority: STAT}
workload_weights:
  - {modality: CT, body_part: "", weight: 1.0}
  - {modality: CT, body_part: CHEST, weight: 1.2}
qc_checks:
  - {name: one_patient, modality: "*", policy: hold, enabled: true}
  - {name: exposure, modality: DX, min_value: 0.05, max_value: 0.95, policy: flag}
sla_policies:
  - {priority: STAT, acknowledge_minutes: 5, report_minutes: 60, at_risk_fraction: 0.75}
  - {priority: STAT, institution: North Hospital, acknowledge_minutes: 3, report_minutes: 45}
  - {priority: ROUTINE, acknowledge_minutes: 240, report_minutes: 1440}
escalation:
  - {priority: STAT, window_minutes: 2, steps: [remind, reassign, supervisors], enabled: true}
  - {priority: URGENT, window_minutes: 15, steps: [remind, supervisors], enabled: false}
retention:
  delivered_hours: 73
  unrouted_hours: 721
  failed_hours: 2000
  rejected_hours: 722
  emergency_free_bytes: 5000000000
"""

# Fields that are state, not configuration: what the router learns or does at run time.
RUNTIME = {
    "id",
    "updated_at",
    "health",
    "health_checked_at",
    "down_since",
    "health_detail",
    "busy_limit",
    "busy_at",
    "config_error",
    "config_error_at",
    "tls_peer_not_after",
    "tls_peer_fingerprint",
    "status",  # a reader's online/offline: set when created, then theirs (the worklist, shifts)
    "expiry_warned_on",
}


def configuration_models():
    from apps.ingest.models import AllowedCaller
    from apps.notifications.models import WebhookEndpoint
    from apps.priors.models import PriorRule
    from apps.reading.models import EscalationPolicy, Privilege, Radiologist, Shift, SlaPolicy
    from apps.routing.models import DeliveryWindow, Destination, RoutingRule, RuleCriterion, RuleTransform, RuleWindow
    from apps.studies.models import PriorityKeyword, QcCheck, RetentionPolicy, SpecialtyMapping, WorkloadWeight
    from apps.transforms.models import TransformProfile

    return [
        TransformProfile,
        AllowedCaller,
        Destination,
        DeliveryWindow,
        RoutingRule,
        RuleCriterion,
        RuleWindow,
        RuleTransform,
        PriorRule,
        Radiologist,
        Shift,
        Privilege,
        WebhookEndpoint,
        SpecialtyMapping,
        PriorityKeyword,
        WorkloadWeight,
        QcCheck,
        SlaPolicy,
        EscalationPolicy,
        RetentionPolicy,
    ]


def configuration_rows() -> dict[str, list]:
    """Every configuration row, field by field; a foreign key as what it points to, a many-to-many as the
    sorted names; sorted, so rows compare whatever their primary keys."""
    from django.contrib.auth import get_user_model

    out = {}
    for model in configuration_models():
        rows = []
        for obj in model.objects.all():
            row = {}
            for f in model._meta.concrete_fields:
                if f.name in RUNTIME:
                    continue
                value = getattr(obj, f.name)
                row[f.name] = str(value) if f.is_relation else value
            for f in model._meta.many_to_many:
                row[f.name] = sorted(str(o) for o in getattr(obj, f.name).all())
            if model.__name__ == "Radiologist":
                row["email"] = obj.user.email
            rows.append(json.dumps(row, sort_keys=True, default=str))
        out[model.__name__] = sorted(rows)
    out["users"] = sorted(get_user_model().objects.filter(radiologist__isnull=False).values_list("username", "email"))
    return out


def configuration_clear() -> None:
    """An empty database's configuration (the tables a migration fills included)."""
    from django.contrib.auth import get_user_model

    for model in reversed(configuration_models()):
        model.objects.all().delete()
    get_user_model().objects.filter(radiologist__isnull=True, is_staff=False).delete()


def round_trip() -> list[str]:
    """Import FULL on an empty configuration, export, empty it, import the export: the differences."""
    from apps.configuration.services import config_export, config_import

    configuration_clear()
    config_import(FULL)
    first, exported = configuration_rows(), config_export()
    configuration_clear()
    config_import(exported)
    second = configuration_rows()
    differences = [
        f"{name}: {sorted(set(first[name]) ^ set(second[name]))}" for name in first if first[name] != second[name]
    ]
    if config_export() != exported:
        differences.append("the second export differs from the first")
    if not first["Destination"] or not first["Privilege"] or not first["WebhookEndpoint"]:
        differences.append("FULL did not import")
    return differences


if __name__ == "__main__":
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerproject.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(json.dumps(round_trip()))
