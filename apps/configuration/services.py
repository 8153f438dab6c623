"""Configuration as one YAML document: every configuration model of the router (transforms, callers,
destinations, rules, prior rules, radiologists with shifts and privileges, webhooks, the classification and
QC tables, SLA policies, the escalation ladder, retention). Import is all or nothing and idempotent; export
writes the same format back, with secrets only by reference. The format is documented in
docs/configuration.md; versions, diffs and rollback are apps.configuration.versions."""

from dataclasses import dataclass, field
from datetime import date, time
from urllib.parse import urlsplit

import yaml
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import ProtectedError
from pydicom import datadict as keyword_dictionary

from apps.core import secret_refs
from apps.core.timewindows import WEEKDAYS
from apps.ingest.models import AllowedCaller
from apps.notifications.models import WebhookEndpoint
from apps.priors.models import PriorRule
from apps.reading.models import EscalationPolicy, Privilege, Radiologist, Shift, SlaPolicy
from apps.routing.health import destination_resume
from apps.routing.models import (
    DeliveryWindow,
    Destination,
    ForwardMode,
    Protocol,
    RoutingRule,
    RuleCriterion,
    RuleTransform,
    RuleWindow,
)
from apps.routing.viewer import viewer_template_errors
from apps.studies.models import PriorityKeyword, QcCheck, RetentionPolicy, SpecialtyMapping, WorkloadWeight
from apps.transforms.models import TransformProfile

SECTIONS = (
    "transforms",
    "callers",
    "destinations",
    "rules",
    "prior_rules",
    "radiologists",
    "webhooks",
    "specialty_mapping",
    "priority_keywords",
    "workload_weights",
    "qc_checks",
    "sla_policies",
    "escalation",
    "retention",
)
RETENTION_FIELDS = ("delivered_hours", "unrouted_hours", "failed_hours", "rejected_hours", "emergency_free_bytes")
DESTINATION_FIELDS = (
    "ae_title",
    "host",
    "port",
    "enabled",
    "max_attempts",
    "retry_base_delay",
    "retry_max_delay",
    "connect_timeout",
    "dimse_timeout",
    "network_timeout",
    "max_associations",
    "alternate_after",
    "retention_hours",
    "storage_commitment",
    "commitment_timeout",
    "viewer_url_template",
)
RULE_FIELDS = ("priority", "enabled", "exclusive", "fallback", "forward_mode", "assign_after_delivery", "description")
# The `match:` shorthand: one key per attribute; a list means "in", study_description is a regex.
SHORTHAND_REGEX = {"study_description"}


class ConfigError(Exception):
    """A bad entry; the message names it. Nothing has been written."""


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)  # by --prune
    disabled: list[str] = field(default_factory=list)  # by --prune, where history keeps the row

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed or self.disabled)

    def __str__(self) -> str:
        text = f"{len(self.created)} created, {len(self.updated)} updated, {self.unchanged} unchanged"
        if self.removed or self.disabled:
            text += f", {len(self.removed)} removed, {len(self.disabled)} disabled (kept for their history)"
        return text


def document_parse(text: str) -> dict:
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError("the document must be a mapping with the sections " + ", ".join(SECTIONS))
    return document


def config_import(text: str, *, prune: bool = False) -> Report:
    """Apply the document: entries are created or updated by their natural key, all or nothing. With
    `prune`, entries of a section the document has but does not name are removed (or disabled, where
    deliveries, assignments or notifications refer to them)."""
    document = document_parse(text)
    if not isinstance(document, dict):
        raise ConfigError("the document must be a mapping with the sections " + ", ".join(SECTIONS))
    unknown = set(document) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}; expected {', '.join(SECTIONS)}")
    report = Report()
    with transaction.atomic():
        for name, apply in (
            ("transforms", _import_transform),
            ("callers", _import_caller),
            ("destinations", _import_destination),
            ("rules", _import_rule),
            ("prior_rules", _import_prior_rule),
            ("radiologists", _import_radiologist),
            ("webhooks", _import_webhook),
        ):
            entries = document.get(name) or []
            if not isinstance(entries, list):
                raise ConfigError(f"{name} must be a list")
            for index, entry in enumerate(entries):
                label = f"{name}[{index}]" + (
                    f" ({entry.get('username') or entry.get('name') or entry.get('ae_title')})"
                    if isinstance(entry, dict)
                    else ""
                )
                if not isinstance(entry, dict):
                    raise ConfigError(f"{label}: each entry must be a mapping")
                try:
                    apply(entry, report)
                except (ValidationError, ValueError, TypeError, KeyError) as exc:
                    raise ConfigError(f"{label}: {_message(exc)}") from exc
        _link_alternates(document.get("destinations") or [], report)
        if "retention" in document:
            try:
                _import_retention(document["retention"] or {}, report)
            except (ValidationError, ValueError, TypeError) as exc:
                raise ConfigError(f"retention: {_message(exc)}") from exc
        for name in TABLES:
            if name in document:
                try:
                    _import_table(name, document[name] or [], report)
                except (ValidationError, ValueError, TypeError, KeyError) as exc:
                    raise ConfigError(f"{name}: {_message(exc)}") from exc
        if prune:
            _prune(document, report)
    return report


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        if hasattr(exc, "message_dict"):
            return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
        return " ".join(exc.messages)
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}"
    return str(exc)


def _check_keys(entry: dict, allowed: set[str], required: set[str]) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
    missing = required - set(entry)
    if missing:
        raise ValueError(f"missing key(s) {', '.join(sorted(missing))}")


def _upsert(model: type[models.Model], lookup: dict, values: dict, report: Report, label: str) -> models.Model:
    obj = model.objects.filter(**lookup).first()
    if obj is None:
        obj = model(**lookup, **values)
        obj.full_clean()
        obj.save()
        report.created.append(label)
        return obj
    changed = [k for k, v in values.items() if getattr(obj, k) != v]
    if changed:
        for k in changed:
            setattr(obj, k, values[k])
        obj.full_clean()
        obj.save()
        report.updated.append(label)
    else:
        report.unchanged += 1
    return obj


def _import_caller(entry: dict, report: Report) -> None:
    _check_keys(entry, {"ae_title", "host", "enabled", "description", "tls", "may", "max_associations"}, {"ae_title"})
    values = {"enabled": bool(entry.get("enabled", True)), "description": str(entry.get("description", ""))}
    limit = entry.get("max_associations")
    values["max_associations"] = None if limit is None else int(limit)
    values |= _caller_grants(entry.get("may"), entry["ae_title"])
    values |= _caller_tls_fields(entry.get("tls"))
    _upsert(
        AllowedCaller,
        {"ae_title": str(entry["ae_title"]), "host": str(entry.get("host", ""))},
        values,
        report,
        f"caller {entry['ae_title']}",
    )


# `tls:` of a caller: what it must show (docs/security.md). Absent: plain TCP allowed, no certificate asked.
CALLER_TLS_KEYS = {
    "required": "tls_required",
    "ca": "client_ca_file",
    "subject": "client_subject",
    "sha256": "client_sha256",
}
# `tls:` of a destination: how we connect. Absent: plain TCP.
DESTINATION_TLS_KEYS = {
    "ca": "tls_ca_file",
    "cert": "tls_cert_file",
    "key": "tls_key_file",
    "verify": "tls_verify",
    "check_hostname": "tls_check_hostname",
}


def _caller_grants(section, title) -> dict:
    """`may: [query, retrieve]`: what a caller may ask of the router beyond storing (docs/query-retrieve.md)."""
    grants = section or []
    if not isinstance(grants, list) or not set(grants) <= {"query", "retrieve"}:
        raise ConfigError(f"caller {title}: may: a list of query and retrieve")
    return {"may_query": "query" in grants, "may_retrieve": "retrieve" in grants}


def _caller_tls_fields(section) -> dict:
    if section is None:
        return {"tls_required": False, "client_ca_file": "", "client_subject": "", "client_sha256": ""}
    if not isinstance(section, dict):
        raise ValueError("tls must be a mapping (required, ca, subject, sha256)")
    _check_keys(section, set(CALLER_TLS_KEYS), set())
    return {
        "tls_required": bool(section.get("required", True)),
        "client_ca_file": str(section.get("ca", "")),
        "client_subject": str(section.get("subject", "")),
        "client_sha256": str(section.get("sha256", "")),
    }


def _destination_tls_fields(section) -> dict:
    if section is None:
        return {
            "tls_enabled": False,
            "tls_ca_file": "",
            "tls_cert_file": "",
            "tls_key_file": "",
            "tls_verify": True,
            "tls_check_hostname": False,
        }
    if not isinstance(section, dict):
        raise ValueError("tls must be a mapping (ca, cert, key, verify, check_hostname)")
    _check_keys(section, set(DESTINATION_TLS_KEYS), set())
    return {
        "tls_enabled": True,
        "tls_ca_file": str(section.get("ca", "")),
        "tls_cert_file": str(section.get("cert", "")),
        "tls_key_file": str(section.get("key", "")),
        "tls_verify": bool(section.get("verify", True)),
        "tls_check_hostname": bool(section.get("check_hostname", False)),
    }


def _export_tls(obj, keys: dict[str, str], defaults: dict) -> dict:
    return {key: getattr(obj, field) for key, field in keys.items() if getattr(obj, field) != defaults.get(key, "")}


TRANSFORM_FIELDS = ("description", "deidentify", "options", "allow_burned_in", "operations", "secret")
OPERATION_KEYS = ("op", "tag", "value", "pattern", "keep_creators")


def _import_transform(entry: dict, report: Report) -> None:
    _check_keys(entry, {"name", "pseudonym_table", *TRANSFORM_FIELDS}, {"name"})
    operations = entry.get("operations") or []
    if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
        raise ValueError("operations must be a list of mappings (op, tag, value, pattern, keep_creators)")
    values = {
        "description": str(entry.get("description", "")),
        "deidentify": bool(entry.get("deidentify", False)),
        "options": [str(o) for o in entry.get("options") or []],
        "allow_burned_in": bool(entry.get("allow_burned_in", False)),
        "operations": [{k: o[k] for k in OPERATION_KEYS if k in o} | _extra_keys(o) for o in operations],
        "secret": str(entry.get("secret", "")),
        "use_pseudonym_table": bool(entry.get("pseudonym_table", False)),
    }
    _upsert(TransformProfile, {"name": str(entry["name"])}, values, report, f"transform {entry['name']}")


def _extra_keys(operation: dict) -> dict:
    """Unknown keys are kept, so the profile's validation names them."""
    return {k: v for k, v in operation.items() if k not in OPERATION_KEYS}


def _profile_id(name) -> int | None:
    if name in (None, ""):
        return None
    profile_id = TransformProfile.objects.filter(name=str(name)).values_list("pk", flat=True).first()
    if profile_id is None:
        raise ValueError(f"unknown transform {name!r}")
    return profile_id


# `dicomweb:` of a destination with `protocol: dicomweb` (docs/configuration.md).
DICOMWEB_KEYS = {
    "url": "dicomweb_url",
    "auth": "dicomweb_auth",
    "credentials": "dicomweb_credentials",
    "timeout": "request_timeout",
    "batch_count": "batch_count",
    "batch_bytes": "batch_bytes",
    "verify": "dicomweb_verify",
}


def _dicomweb_fields(entry: dict) -> dict:
    """A DICOMweb destination's fields; its host and port (for the admin's list) come from its URL."""
    protocol = str(entry.get("protocol", Protocol.DICOM))
    section = entry.get("dicomweb")
    if protocol != Protocol.DICOMWEB:
        if section is not None:
            raise ValueError("dicomweb: only with protocol: dicomweb")
        return {"protocol": protocol, "dicomweb_url": ""}
    if not isinstance(section, dict) or "url" not in section:
        raise ValueError("protocol dicomweb needs dicomweb: {url: ...}")
    _check_keys(section, set(DICOMWEB_KEYS), {"url"})
    defaults = {f: Destination._meta.get_field(f).get_default() for f in DICOMWEB_KEYS.values()}
    values = {field: section.get(key, defaults[field]) for key, field in DICOMWEB_KEYS.items()}
    url = urlsplit(str(section["url"]))
    port = url.port or (443 if url.scheme == "https" else 80)
    return {"protocol": protocol, **values, "host": url.hostname or "", "port": port}


def _import_destination(entry: dict, report: Report) -> None:
    web = entry.get("protocol") == Protocol.DICOMWEB
    _check_keys(
        entry,
        {"name", "alternate", "windows", "tls", "transform", "protocol", "dicomweb", *DESTINATION_FIELDS},
        {"name"} if web else {"name", "ae_title", "host", "port"},
    )
    if web:
        entry = {"ae_title": "DICOMWEB", "host": "", "port": 0, **entry}
    defaults = {f.name: f.get_default() for f in Destination._meta.fields if f.name in DESTINATION_FIELDS}
    values = {k: entry.get(k, defaults.get(k)) for k in DESTINATION_FIELDS}
    values |= _destination_tls_fields(entry.get("tls"))
    values |= _dicomweb_fields(entry)
    values["transform_id"] = _profile_id(entry.get("transform"))
    values["port"] = int(values["port"])
    values["ae_title"] = str(values["ae_title"])
    values["host"] = str(values["host"])
    values["viewer_url_template"] = str(values["viewer_url_template"])
    if errors := viewer_template_errors(values["viewer_url_template"]):
        raise ValueError(f"viewer_url_template {'; '.join(errors)}")
    label = f"destination {entry['name']}"
    destination = _upsert(Destination, {"name": str(entry["name"])}, values, report, label)
    if destination.config_error and label in report.updated:  # its configuration changed: try it again
        destination_resume(destination_id=destination.pk)
    if _windows_sync(
        destination.windows, DeliveryWindow, {"destination": destination}, _windows_from(entry, "windows")
    ):
        _mark_updated(report, label)


def _link_alternates(entries: list, report: Report) -> None:
    """Alternates name other destinations, so they are linked once every destination exists."""
    for index, entry in enumerate(entries):
        name = str(entry["name"])
        wanted = entry.get("alternate")
        destination = Destination.objects.get(name=name)
        alternate = None
        if wanted:
            alternate = Destination.objects.filter(name=str(wanted)).first()
            if alternate is None or alternate.pk == destination.pk:
                raise ConfigError(f"destinations[{index}] ({name}): alternate {wanted!r} is not another destination")
        if destination.alternate_id != (alternate.pk if alternate else None):
            destination.alternate = alternate
            destination.save(update_fields=["alternate", "updated_at"])
            _mark_updated(report, f"destination {name}")


def _mark_updated(report: Report, label: str) -> None:
    """An entry whose own row was unchanged but whose children changed counts as updated once."""
    if label in report.created or label in report.updated:
        return
    report.unchanged -= 1
    report.updated.append(label)


def _criteria_from(entry: dict) -> list[tuple[str, str, str, str]]:
    """(attribute, operator, value, keyword) tuples from `match:` shorthand and `criteria:` long form.

    In `match:`, a key that is not a rule attribute but a DICOM keyword (PatientSex, ...) tests that keyword.
    """
    criteria = []
    match = entry.get("match") or {}
    if not isinstance(match, dict):
        raise ValueError("match must be a mapping of attribute: value")
    for attribute, value in match.items():
        keyword = ""
        if attribute not in RuleCriterion.Attribute.values and keyword_dictionary.tag_for_keyword(attribute):
            attribute, keyword = RuleCriterion.Attribute.KEYWORD, attribute
        if isinstance(value, list):
            criteria.append((attribute, "in", ",".join(str(v) for v in value), keyword))
        elif attribute in SHORTHAND_REGEX:
            criteria.append((attribute, "regex", str(value), keyword))
        else:
            criteria.append((attribute, "equals", str(value), keyword))
    for item in entry.get("criteria") or []:
        _check_keys(item, {"attribute", "operator", "value", "keyword"}, {"attribute", "operator"})
        criteria.append((item["attribute"], item["operator"], str(item.get("value", "")), str(item.get("keyword", ""))))
    return criteria


def _import_rule(entry: dict, report: Report) -> None:
    _check_keys(entry, {"name", "match", "criteria", "windows", "destinations", "transforms", *RULE_FIELDS}, {"name"})
    values = {k: entry.get(k, RoutingRule._meta.get_field(k).get_default()) for k in RULE_FIELDS}
    values["priority"] = int(values["priority"])
    label = f"rule {entry['name']}"
    rule = _upsert(RoutingRule, {"name": str(entry["name"])}, values, report, label)

    criteria = _criteria_from(entry)
    for attribute, operator, value, keyword in criteria:
        RuleCriterion(rule=rule, attribute=attribute, operator=operator, value=value, keyword=keyword).full_clean(
            exclude=["rule"]
        )
    current = [(c.attribute, c.operator, c.value, c.keyword) for c in rule.criteria.all()]
    names = [str(n) for n in entry.get("destinations") or []]
    destinations = list(Destination.objects.filter(name__in=names))
    missing = set(names) - {d.name for d in destinations}
    if missing:
        raise ValueError(f"unknown destination(s) {', '.join(sorted(missing))}")
    changed = False
    if current != criteria:
        rule.criteria.all().delete()
        RuleCriterion.objects.bulk_create(
            RuleCriterion(rule=rule, attribute=a, operator=o, value=v, keyword=k) for a, o, v, k in criteria
        )
        changed = True
    if {d.pk for d in rule.destinations.all()} != {d.pk for d in destinations}:
        rule.destinations.set(destinations)
        changed = True
    if _windows_sync(rule.windows, RuleWindow, {"rule": rule}, _windows_from(entry, "windows")):
        changed = True
    if _rule_transforms_sync(rule, entry.get("transforms") or {}, destinations):
        changed = True
    if changed:
        # Criteria and windows are children: bump the rule so the compiled rules are rebuilt.
        rule.save(update_fields=["updated_at"])
        _mark_updated(report, label)


PRIOR_RULE_FIELDS = ("enabled", "match", "max_age_years", "max_count", "modalities", "description")


def _import_prior_rule(entry: dict, report: Report) -> None:
    _check_keys(entry, {"name", "archive", *PRIOR_RULE_FIELDS}, {"name", "archive"})
    values = {k: entry.get(k, PriorRule._meta.get_field(k).get_default()) for k in PRIOR_RULE_FIELDS}
    listed = values["modalities"] if isinstance(values["modalities"], list) else str(values["modalities"]).split(",")
    values["modalities"] = ",".join(str(m).strip().upper() for m in listed if str(m).strip())
    values["max_count"] = int(values["max_count"])
    values["max_age_years"] = None if values["max_age_years"] is None else int(values["max_age_years"])
    archive = Destination.objects.filter(name=str(entry["archive"])).first()
    if archive is None:
        raise ValueError(f"unknown archive destination {entry['archive']}")
    values["archive"] = archive
    _upsert(PriorRule, {"name": str(entry["name"])}, values, report, f"prior rule {entry['name']}")


def _export_prior_rule(rule: PriorRule) -> dict:
    out = {"name": rule.name, "archive": rule.archive.name, **{f: getattr(rule, f) for f in PRIOR_RULE_FIELDS}}
    out["modalities"] = rule.modality_list()
    return {k: v for k, v in out.items() if v not in ("", [])}


def _rule_transforms_sync(rule: RoutingRule, wanted: dict, destinations: list[Destination]) -> bool:
    """`transforms: {destination: profile}`: the profile this rule's use of each destination goes through."""
    if not isinstance(wanted, dict):
        raise ValueError("transforms must map destination names to transform names")
    by_name = {d.name: d for d in destinations}
    rows = {}
    for destination, profile in wanted.items():
        if str(destination) not in by_name:
            raise ValueError(f"transforms: {destination!r} is not one of this rule's destinations")
        rows[by_name[str(destination)].pk] = _profile_id(profile)
    current = dict(RuleTransform.objects.filter(rule=rule).values_list("destination_id", "profile_id"))
    if current == rows:
        return False
    RuleTransform.objects.filter(rule=rule).delete()
    RuleTransform.objects.bulk_create(
        RuleTransform(rule=rule, destination_id=d, profile_id=p) for d, p in sorted(rows.items())
    )
    return True


def _parse_time(value) -> time:
    text = str(value).strip()
    if text == "24:00":
        return time(23, 59)
    try:
        hours, minutes = text.split(":")
        return time(int(hours), int(minutes))
    except ValueError as exc:
        raise ValueError(f"time {text!r} is not HH:MM") from exc


def _windows_from(entry: dict, key: str) -> list[tuple[str, time, time, str]]:
    """Weekly windows (shifts, rule and delivery windows) as (weekdays, start, end, timezone) tuples."""
    windows = []
    for item in entry.get(key) or []:
        _check_keys(item, {"days", "start", "end", "timezone"}, {"days", "start", "end"})
        days = item["days"]
        days = [d.strip().lower() for d in (days.split(",") if isinstance(days, str) else days)]
        days = [d for d in WEEKDAYS if d in days] if set(days) <= set(WEEKDAYS) else days
        windows.append(
            (",".join(days), _parse_time(item["start"]), _parse_time(item["end"]), item.get("timezone", "UTC"))
        )
    return windows


def _windows_sync(manager, model, owner: dict, wanted: list[tuple[str, time, time, str]]) -> bool:
    """Replace the owner's windows when they differ; True when they did."""
    for days, start, end, tz in wanted:
        model(**owner, weekdays=days, start=start, end=end, timezone=tz).full_clean(exclude=list(owner))
    if [(w.weekdays, w.start, w.end, w.timezone) for w in manager.all()] == wanted:
        return False
    manager.all().delete()
    model.objects.bulk_create(model(**owner, weekdays=d, start=s, end=e, timezone=tz) for d, s, e, tz in wanted)
    return True


def _import_radiologist(entry: dict, report: Report) -> None:
    _check_keys(
        entry,
        {
            "username",
            "name",
            "email",
            "specialty",
            "subspecialty",
            "status",
            "capacity",
            "seniority",
            "max_per_hour",
            "shifts",
            "privileges",
        },
        {"username", "specialty"},
    )
    username = str(entry["username"])
    label = f"radiologist {username}"
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    email = str(entry.get("email", ""))
    if user is None:
        user = user_model(username=username, email=email)
        user.set_unusable_password()
        user.full_clean()
        user.save()
    elif user.email != email:
        user.email = email
        user.save(update_fields=["email"])
    values = {
        "display_name": str(entry.get("name") or username),
        "specialty": str(entry["specialty"]),
        "subspecialty": str(entry.get("subspecialty", "")),
        "capacity": float(entry.get("capacity", Radiologist._meta.get_field("capacity").default)),
        "seniority": int(entry.get("seniority", 0)),
        "max_per_hour": int(entry.get("max_per_hour", 0)),
    }
    status = str(entry.get("status", Radiologist.Status.ONLINE))
    if status not in Radiologist.Status.values:
        raise ValueError(f"status {status!r} is not one of {', '.join(Radiologist.Status.values)}")
    if not Radiologist.objects.filter(user=user).exists():
        values["status"] = status  # state, not configuration: set when the reader is created, then theirs
    radiologist = _upsert(Radiologist, {"user": user}, values, report, label)
    if _shifts_sync(radiologist, entry.get("shifts") or []):
        _mark_updated(report, label)
    if _privileges_sync(radiologist, entry.get("privileges") or []):
        _mark_updated(report, label)


def _shifts_sync(radiologist: Radiologist, items: list) -> bool:
    """Shifts are windows with `sets_online` (the reader counts as online during the shift)."""
    if not isinstance(items, list):
        raise ValueError("shifts must be a list")
    flags = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each shift must be a mapping (days, start, end, timezone, sets_online)")
        flags.append(bool(item.get("sets_online", False)))
    windows = _windows_from({"shifts": [{k: v for k, v in i.items() if k != "sets_online"} for i in items]}, "shifts")
    wanted = [(*window, flag) for window, flag in zip(windows, flags, strict=True)]
    for days, start, end, tz, _ in wanted:
        Shift(radiologist=radiologist, weekdays=days, start=start, end=end, timezone=tz).full_clean(
            exclude=["radiologist"]
        )
    current = [(w.weekdays, w.start, w.end, w.timezone, w.sets_online) for w in radiologist.shifts.all()]
    if current == wanted:
        return False
    radiologist.shifts.all().delete()
    Shift.objects.bulk_create(
        Shift(radiologist=radiologist, weekdays=d, start=st, end=e, timezone=tz, sets_online=on)
        for d, st, e, tz, on in wanted
    )
    return True


def _privileges_sync(radiologist: Radiologist, items: list) -> bool:
    """`privileges: [{institution, expires_on}]`: where the reader may read, until when (none: no expiry).
    A privilege whose expiry is unchanged keeps its "expiry warned" mark."""
    if not isinstance(items, list):
        raise ValueError("privileges must be a list")
    wanted = {}
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each privilege must be a mapping (institution, expires_on)")
        _check_keys(item, {"institution", "expires_on"}, {"institution"})
        expires = item.get("expires_on")
        if expires is not None and not isinstance(expires, date):
            try:
                expires = date.fromisoformat(str(expires))
            except ValueError as exc:
                raise ValueError(f"privileges: expires_on {expires!r} is not YYYY-MM-DD") from exc
        institution = str(item["institution"])
        if institution in wanted:
            raise ValueError(f"privileges: {institution} twice")
        wanted[institution] = expires
    current = {p.institution: p for p in radiologist.privileges.all()}
    changed = False
    for institution, privilege in current.items():
        if institution not in wanted:
            privilege.delete()
            changed = True
        elif privilege.expires_on != wanted[institution]:
            privilege.expires_on, privilege.expiry_warned_on = wanted[institution], None
            privilege.full_clean()
            privilege.save(update_fields=["expires_on", "expiry_warned_on"])
            changed = True
    for institution, expires in wanted.items():
        if institution not in current:
            privilege = Privilege(radiologist=radiologist, institution=institution, expires_on=expires)
            privilege.full_clean()
            privilege.save()
            changed = True
    return changed


WEBHOOK_FIELDS = ("url", "events", "enabled", "phi_approved")


def _import_webhook(entry: dict, report: Report) -> None:
    """A webhook endpoint; its `secret` is where the signing secret is (env:VARIABLE or file:/path)."""
    _check_keys(entry, {"name", "secret", *WEBHOOK_FIELDS}, {"name", "url"})
    name = str(entry["name"])
    existing = WebhookEndpoint.objects.filter(name=name).first()
    secret = entry.get("secret")
    if secret is None and existing is None:
        raise ValueError("secret: env:VARIABLE or file:/path (where the signing secret is)")
    if secret is not None and not secret_refs.is_reference(str(secret)):
        raise ValueError("secret: env:VARIABLE or file:/path, never the secret itself")
    events = entry.get("events") or []
    events = events.split(",") if isinstance(events, str) else events
    values = {
        "url": str(entry["url"]),
        "events": ",".join(str(e).strip() for e in events if str(e).strip()),
        "enabled": bool(entry.get("enabled", True)),
        "phi_approved": bool(entry.get("phi_approved", False)),
        "secret": str(secret) if secret is not None else existing.secret,
    }
    _upsert(WebhookEndpoint, {"name": name}, values, report, f"webhook {name}")


def _export_webhook(w: WebhookEndpoint) -> dict:
    out = {"name": w.name, "url": w.url}
    if secret_refs.is_reference(w.secret):  # a literal from before references is never written out
        out["secret"] = w.secret
    if events := [e for e in w.events.split(",") if e]:
        out["events"] = events
    return out | {"enabled": w.enabled, "phi_approved": w.phi_approved}


def _import_retention(entry: dict, report: Report) -> None:
    """The retention policy (one row): keys left out keep their value; `failed_hours: null` means never."""
    if not isinstance(entry, dict):
        raise ValueError("must be a mapping")
    _check_keys(entry, set(RETENTION_FIELDS), set())
    policy = RetentionPolicy.current()
    changed = False
    for name in RETENTION_FIELDS:
        if name in entry:
            value = None if entry[name] is None else int(entry[name])
            if value is None and not policy._meta.get_field(name).null:
                raise ValueError(f"{name} cannot be empty")
            if value is not None and value < 0:
                raise ValueError(f"{name} cannot be negative")
            changed |= getattr(policy, name) != value
            setattr(policy, name, value)
    if changed or policy.pk is None:
        policy.save()
        report.updated.append("retention")
    else:
        report.unchanged += 1


def _mapping_row(index: int, item: dict) -> dict:
    parts = item.get("body_parts", "")
    parts = ",".join(p.strip().upper() for p in (parts.split(",") if isinstance(parts, str) else parts) if p.strip())
    return {
        "order": int(item.get("order", (index + 1) * 10)),
        "modality": str(item.get("modality", "")).upper(),
        "body_parts": parts,
        "description_pattern": str(item.get("description_pattern", "")),
        "specialty": str(item["specialty"]),
        "subspecialty": str(item.get("subspecialty", "")),
        "enabled": bool(item.get("enabled", True)),
    }


def _escalation_row(index: int, item: dict) -> dict:
    steps = item.get("steps", EscalationPolicy._meta.get_field("steps").default)
    steps = steps.split(",") if isinstance(steps, str) else steps
    return {
        "priority": str(item["priority"]).upper(),
        "window_minutes": int(item.get("window_minutes", EscalationPolicy._meta.get_field("window_minutes").default)),
        "steps": ",".join(str(step).strip() for step in steps),
        "enabled": bool(item.get("enabled", True)),
    }


# Tables replaced as a whole when they differ: (model, builder of one row from an entry).
TABLES = {
    "specialty_mapping": (SpecialtyMapping, _mapping_row),
    "priority_keywords": (
        PriorityKeyword,
        lambda i, item: {"keyword": str(item["keyword"]).upper(), "priority": str(item["priority"]).upper()},
    ),
    "workload_weights": (
        WorkloadWeight,
        lambda i, item: {
            "modality": str(item["modality"]).upper(),
            "body_part": str(item.get("body_part", "")).upper(),
            "weight": float(item["weight"]),
        },
    ),
    "qc_checks": (
        QcCheck,
        lambda i, item: {
            "name": str(item["name"]),
            "modality": str(item.get("modality", "*")).upper(),
            "min_value": None if item.get("min_value") is None else float(item["min_value"]),
            "max_value": None if item.get("max_value") is None else float(item["max_value"]),
            "policy": str(item.get("policy", QcCheck.Policy.FLAG)),
            "enabled": bool(item.get("enabled", True)),
        },
    ),
    "sla_policies": (
        SlaPolicy,
        lambda i, item: {
            "priority": str(item["priority"]).upper(),
            "institution": str(item.get("institution", "")),
            "acknowledge_minutes": int(item["acknowledge_minutes"]),
            "report_minutes": int(item["report_minutes"]),
            "at_risk_fraction": float(item.get("at_risk_fraction", 0.8)),
        },
    ),
    "escalation": (EscalationPolicy, _escalation_row),
}
# How a table's row is written out, where not field by field.
TABLE_EXPORTS = {
    "escalation": lambda row: row | {"steps": row["steps"].split(",")},
}


def _table_rows(model) -> list[dict]:
    fields = [f.name for f in model._meta.fields if f.name != "id"]
    return [{f: getattr(row, f) for f in fields} for row in model.objects.all()]


def _import_table(name: str, entries: list, report: Report) -> None:
    model, build = TABLES[name]
    if not isinstance(entries, list):
        raise ValueError("must be a list")
    fields = {f.name for f in model._meta.fields if f.name != "id"}
    wanted = []
    for index, item in enumerate(entries):
        if not isinstance(item, dict):
            raise ValueError(f"entry {index} must be a mapping")
        unknown = set(item) - fields
        if unknown:
            raise ValueError(f"entry {index}: unknown key(s) {', '.join(sorted(unknown))}")
        row = build(index, item)
        try:
            model(**row).full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            raise ValueError(f"entry {index}: {_message(exc)}") from exc
        wanted.append(row)
    if _table_rows(model) == wanted:
        report.unchanged += 1
        return
    model.objects.all().delete()
    try:
        with transaction.atomic():
            model.objects.bulk_create(model(**row) for row in wanted)
    except IntegrityError as exc:
        raise ValueError("two entries have the same key") from exc
    report.updated.append(name)


def config_document() -> dict:
    """Every configuration model as the document's sections, in a stable order (secrets by reference only)."""
    return {
        "transforms": [_export_transform(t) for t in TransformProfile.objects.order_by("name")],
        "callers": [_export_caller(c) for c in AllowedCaller.objects.order_by("ae_title", "host")],
        "destinations": [
            _export_destination(d)
            for d in Destination.objects.select_related("alternate", "transform")
            .prefetch_related("windows")
            .order_by("name")
        ],
        "rules": [
            _export_rule(r)
            for r in RoutingRule.objects.prefetch_related(
                "criteria", "destinations", "windows", "transforms__destination", "transforms__profile"
            )
        ],
        "prior_rules": [_export_prior_rule(r) for r in PriorRule.objects.select_related("archive").order_by("name")],
        "radiologists": [
            _export_radiologist(r)
            for r in Radiologist.objects.select_related("user")
            .prefetch_related("shifts", "privileges")
            .order_by("user__username")
        ],
        "webhooks": [_export_webhook(w) for w in WebhookEndpoint.objects.order_by("name")],
        **{
            name: [TABLE_EXPORTS.get(name, dict)(row) for row in _table_rows(model)]
            for name, (model, _) in TABLES.items()
        },
        "retention": {name: getattr(RetentionPolicy.current(), name) for name in RETENTION_FIELDS},
    }


def config_export() -> str:
    return document_dump(config_document())


def document_dump(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


# --prune: (section, model, the entry's natural key as a lookup, how a row is disabled when history keeps it).
PRUNABLE = (
    ("rules", RoutingRule, lambda e: {"name": str(e["name"])}, None),
    ("prior_rules", PriorRule, lambda e: {"name": str(e["name"])}, None),
    ("destinations", Destination, lambda e: {"name": str(e["name"])}, {"enabled": False}),
    ("transforms", TransformProfile, lambda e: {"name": str(e["name"])}, None),
    ("callers", AllowedCaller, lambda e: {"ae_title": str(e["ae_title"]), "host": str(e.get("host", ""))}, None),
    (
        "radiologists",
        Radiologist,
        lambda e: {"user__username": str(e["username"])},
        {"status": Radiologist.Status.OFFLINE},
    ),
    ("webhooks", WebhookEndpoint, lambda e: {"name": str(e["name"])}, {"enabled": False}),
)


def _prune(document: dict, report: Report) -> None:
    """Remove what a section of the document does not name. A destination with deliveries, a reader with
    assignments and a webhook with notifications are kept for that history, disabled (a reader: offline);
    anything else that history keeps refuses the whole import."""
    for section, model, lookup, disable in PRUNABLE:
        if section not in document:
            continue  # a section left out is left alone, as on import
        named = models.Q(pk__in=[])
        for entry in document[section] or []:
            named |= models.Q(**lookup(entry))
        for obj in model.objects.exclude(named):
            label = f"{section[:-1].replace('_', ' ')} {obj}"
            kept = isinstance(obj, WebhookEndpoint) and obj.notifications.exists()
            if not kept:
                try:
                    with transaction.atomic():
                        obj.delete()
                    report.removed.append(label)
                    continue
                except ProtectedError as exc:
                    if disable is None:
                        raise ConfigError(f"--prune: {label} is still used ({exc.args[0]})") from exc
            if disable is None:
                raise ConfigError(f"--prune: {label} is still used")
            if any(getattr(obj, k) != v for k, v in disable.items()):
                for k, v in disable.items():
                    setattr(obj, k, v)
                obj.save(update_fields=list(disable))
                report.disabled.append(label)


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if v not in ("", None)}


def _export_windows(manager) -> list[dict]:
    return [
        {
            "days": w.weekdays.split(","),
            "start": w.start.strftime("%H:%M"),
            "end": w.end.strftime("%H:%M"),
            "timezone": w.timezone,
        }
        for w in manager.all()
    ]


def _export_caller(c: AllowedCaller) -> dict:
    out = _clean(
        {
            "ae_title": c.ae_title,
            "host": c.host,
            "enabled": c.enabled,
            "description": c.description,
            "max_associations": c.max_associations,
        }
    )
    if grants := [name for name, flag in (("query", c.may_query), ("retrieve", c.may_retrieve)) if flag]:
        out["may"] = grants
    if c.tls_required or c.client_ca_file or c.client_subject or c.client_sha256:
        out["tls"] = {"required": c.tls_required} | _export_tls(c, CALLER_TLS_KEYS, {"required": c.tls_required})
    return out


def _export_destination(d: Destination) -> dict:
    out = {"name": d.name, **{f: getattr(d, f) for f in DESTINATION_FIELDS if getattr(d, f) is not None}}
    if not d.viewer_url_template:
        out.pop("viewer_url_template")  # no link: documents from before the field stay as they were
    # A DICOMweb destination's https verification uses the same fields without turning DICOM TLS on.
    if d.tls_enabled or (d.protocol == Protocol.DICOMWEB and (d.tls_ca_file or not d.tls_verify)):
        out["tls"] = _export_tls(d, DESTINATION_TLS_KEYS, {"verify": True, "check_hostname": False})
    if d.transform_id:
        out["transform"] = d.transform.name
    if d.protocol == Protocol.DICOMWEB:
        for derived in ("ae_title", "host", "port"):
            out.pop(derived)
        out["protocol"] = d.protocol
        defaults = {f: Destination._meta.get_field(f).get_default() for f in DICOMWEB_KEYS.values()}
        out["dicomweb"] = {k: getattr(d, f) for k, f in DICOMWEB_KEYS.items() if getattr(d, f) != defaults[f]}
    if d.alternate:
        out["alternate"] = d.alternate.name
    if windows := _export_windows(d.windows):
        out["windows"] = windows
    return out


def _export_rule(rule: RoutingRule) -> dict:
    out = {"name": rule.name, **{f: getattr(rule, f) for f in RULE_FIELDS}}
    if not out["description"]:
        del out["description"]
    if out["forward_mode"] == ForwardMode.AFTER_QC:
        del out["forward_mode"]
    out["criteria"] = [
        _clean({"attribute": c.attribute, "keyword": c.keyword, "operator": c.operator, "value": c.value})
        for c in rule.criteria.all()
    ]
    if windows := _export_windows(rule.windows):
        out["windows"] = windows
    out["destinations"] = sorted(d.name for d in rule.destinations.all())
    transforms = {t.destination.name: t.profile.name for t in rule.transforms.all()}
    if transforms:
        out["transforms"] = dict(sorted(transforms.items()))
    return out


def _export_transform(t: TransformProfile) -> dict:
    out = {"name": t.name, **{f: getattr(t, f) for f in TRANSFORM_FIELDS if getattr(t, f) not in ("", [], False)}}
    if t.use_pseudonym_table:
        out["pseudonym_table"] = True
    return out


def _export_radiologist(r: Radiologist) -> dict:
    out = {
        "username": r.user.username,
        "name": r.display_name,
        "email": r.user.email,
        "specialty": r.specialty,
        "subspecialty": r.subspecialty,
        "capacity": r.capacity,
        "seniority": r.seniority,
        "max_per_hour": r.max_per_hour,
        "shifts": [
            window | ({"sets_online": True} if shift.sets_online else {})
            for window, shift in zip(_export_windows(r.shifts), r.shifts.all(), strict=True)
        ],
    }
    if privileges := [
        {"institution": p.institution, "expires_on": p.expires_on}
        for p in sorted(r.privileges.all(), key=lambda p: p.institution)
    ]:
        out["privileges"] = privileges
    return out
