"""Configuration versions: every change from the admin, an import or a rollback records the whole document
after it, with who, when and from where. A diff says what a document would add, change (field by field),
remove and leave untouched, before anything is written; a rollback applies an earlier version's document
all or nothing, as a new version.

The document is the export (apps.configuration.services), which carries secrets only by reference, so no
version and no diff holds a secret.
"""

import getpass
import logging
from dataclasses import dataclass, field

import yaml
from django.db import transaction

from apps.audit.models import AuditEvent

from .models import ConfigVersion
from .services import ConfigError, Report, config_document, config_import, document_dump

logger = logging.getLogger(__name__)

# The natural key of an entry in each list section; a diff matches entries by it.
KEYS = {
    "transforms": ("name",),
    "callers": ("ae_title", "host"),
    "destinations": ("name",),
    "rules": ("name",),
    "prior_rules": ("name",),
    "radiologists": ("username",),
    "webhooks": ("name",),
    "specialty_mapping": ("order",),
    "priority_keywords": ("keyword",),
    "workload_weights": ("modality", "body_part"),
    "qc_checks": ("name", "modality"),
    "sla_policies": ("priority", "institution"),
    "escalation": ("priority",),
}


@dataclass(frozen=True)
class Change:
    section: str
    key: str
    kind: str  # added | changed | removed
    fields: tuple[tuple[str, object, object], ...] = ()  # (field, before, after) for a change

    def __str__(self) -> str:
        sign = {"added": "+", "changed": "~", "removed": "-"}[self.kind]
        lines = [f"{sign} {self.section}: {self.key}"]
        lines += [f"    {name}: {_show(before)} -> {_show(after)}" for name, before, after in self.fields]
        return "\n".join(lines)


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not self.changes

    def count(self, kind: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind)

    def summary(self) -> str:
        return (
            f"{self.count('added')} added, {self.count('changed')} changed, {self.count('removed')} removed, "
            f"{self.unchanged} untouched"
        )

    def __str__(self) -> str:
        return "\n".join([*(str(c) for c in self.changes), self.summary()])


def _show(value) -> str:
    if value is None:
        return "(none)"
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _key(section: str, entry: dict) -> str:
    return " / ".join(str(entry.get(k, "")) for k in KEYS[section]) or "(default)"


def _flatten(entry: dict, prefix: str = "") -> dict:
    """Nested mappings (tls, dicomweb) as dotted fields; lists stay whole values."""
    out = {}
    for name, value in entry.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = value
    return out


def document_diff(before: dict, after: dict) -> Diff:
    """What changes from `before` to `after`, two documents as `config_document` gives them."""
    diff = Diff()
    for section in dict.fromkeys([*before, *after]):
        old, new = before.get(section), after.get(section)
        if section not in KEYS:  # a single mapping (retention)
            old, new = _flatten(old or {}), _flatten(new or {})
            fields = tuple((k, old.get(k), new.get(k)) for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k))
            if fields:
                diff.changes.append(Change(section, section, "changed", fields))
            else:
                diff.unchanged += 1
            continue
        old = {_key(section, e): _flatten(e) for e in old or []}
        new = {_key(section, e): _flatten(e) for e in new or []}
        for key, entry in new.items():
            if key not in old:
                diff.changes.append(Change(section, key, "added"))
                continue
            was = old[key]
            fields = tuple(
                (k, was.get(k), entry.get(k)) for k in dict.fromkeys([*was, *entry]) if was.get(k) != entry.get(k)
            )
            if fields:
                diff.changes.append(Change(section, key, "changed", fields))
            else:
                diff.unchanged += 1
        diff.changes += [Change(section, key, "removed") for key in old if key not in new]
    return diff


def config_preview(text: str, *, prune: bool = False) -> tuple[Report, Diff]:
    """What `text` would do, computed by applying it in a transaction that is then rolled back: nothing is
    written, no version recorded, nothing sent (work a change would start waits for the commit)."""
    with transaction.atomic():
        before = config_document()
        report = config_import(text, prune=prune)
        diff = document_diff(before, config_document())
        transaction.set_rollback(True)
    return report, diff


@dataclass
class Applied:
    report: Report
    diff: Diff
    version: ConfigVersion | None  # None: the document changed nothing


def config_apply(
    text: str,
    *,
    source: str = ConfigVersion.Source.IMPORT,
    user=None,
    author: str | None = None,
    prune: bool = False,
    restored_from: ConfigVersion | None = None,
) -> Applied:
    """Apply a document (all or nothing) and record the version it makes, if it changes anything."""
    with transaction.atomic():
        before = _baseline_ensure(config_document())
        report = config_import(text, prune=prune)
        after = config_document()
        diff = document_diff(before, after)
        version = version_record(user=user, author=author, source=source, restored_from=restored_from, after=after)
    if version is not None:
        logger.info("configuration version %s (%s by %s): %s", version.pk, source, version.author, diff.summary())
    return Applied(report, diff, version)


def config_restore(number: int, *, user=None, author: str | None = None, address: str | None = None) -> Applied:
    """Roll back to version `number`: its document applied with prune, as a new version (if it changes
    anything), audited."""
    version = ConfigVersion.objects.filter(pk=number).first()
    if version is None:
        raise ConfigError(f"there is no version {number}")
    with transaction.atomic():
        applied = config_apply(
            version.document,
            source=ConfigVersion.Source.ROLLBACK,
            user=user,
            author=author,
            prune=True,
            restored_from=version,
        )
        made = f"as version {applied.version.pk}" if applied.version else "(nothing differed)"
        AuditEvent.objects.create(
            user=user,
            username=_author(user, author),
            action="config_rollback",
            source_address=address,
            detail=f"configuration restored to version {number} {made}: {applied.diff.summary()}",
        )
    return applied


def baseline_ensure() -> None:
    """Before a change from the admin: if the configuration differs from the latest version (changes made
    before versions existed, or outside the admin and imports), record it as it is, so the change about to
    be made can be rolled back to it."""
    _baseline_ensure(config_document())


def _baseline_ensure(document: dict) -> dict:
    latest = ConfigVersion.objects.order_by("-pk").first()
    text = document_dump(document)
    if latest is None or latest.document != text:
        summary = "what was there" if latest is None else str(document_diff(yaml.safe_load(latest.document), document))
        ConfigVersion.objects.create(
            author="(unrecorded)", source=ConfigVersion.Source.BASELINE, summary=summary, document=text
        )
    return document


def changed(*, user, source: str = ConfigVersion.Source.ADMIN) -> None:
    """A change was made (in the admin, in the current transaction): record the version after it once the
    transaction commits, unless the document is the same as the latest version's."""
    transaction.on_commit(lambda: version_record(user=user, source=source))


def version_record(
    *,
    user=None,
    author: str | None = None,
    source: str,
    restored_from: ConfigVersion | None = None,
    after: dict | None = None,
) -> ConfigVersion | None:
    """Record the configuration as it is (`after`, if the caller has it) as a version, with what changed
    from the latest; none when it is the latest's document."""
    with transaction.atomic():
        after = config_document() if after is None else after
        latest = ConfigVersion.objects.select_for_update().order_by("-pk").first()
        text = document_dump(after)
        if latest is not None and latest.document == text:
            return None
        before = yaml.safe_load(latest.document) if latest is not None else {}
        return ConfigVersion.objects.create(
            user=user,
            author=_author(user, author),
            source=source,
            summary=str(document_diff(before, after)),
            document=text,
            restored_from=restored_from,
        )


def _author(user, author: str | None) -> str:
    if author:
        return author
    if user is not None and user.is_authenticated:
        return user.get_username()
    try:
        return f"{getpass.getuser()} (system)"
    except (KeyError, OSError):
        return "(system)"
