"""A transform profile as data, and its validation. Nothing here reads a file."""

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom import config
from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import validate_value

from . import annex_e, paths

SET, PREFIX, SUFFIX, REPLACE, REMOVE = "set", "prefix", "suffix", "replace", "remove"
REMOVE_PRIVATE, DATE_SHIFT, HASH = "remove_private", "date_shift", "hash"
OPS = (SET, PREFIX, SUFFIX, REPLACE, REMOVE, REMOVE_PRIVATE, DATE_SHIFT, HASH)
OPTIONS = annex_e.OPTIONS

# The VRs whose values are text that prefix, suffix, replace and hash may rewrite.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
HASHABLE_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UT"})
SHIFTABLE_VRS = frozenset({"DA", "DT"})


class Held(Exception):
    """This instance must not go to this destination. `reason` is shown to operators: it names attributes,
    VRs and rules, never a value taken from the instance."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Operation:
    """One coercion step. `tag` is a keyword, `(gggg,eeee)`, `gggg,eeee` or a sequence path (paths.py).

    set: `value` is a literal or a template naming keywords, `{InstitutionName}-{AccessionNumber}` (`{{` for a
    brace); the attribute is created when absent, in every item the path reaches.
    prefix / suffix: `value` is added to each non-empty value.
    replace: `pattern` (a Python regex) is replaced by `value` (`\\1` and `\\g<name>` refer to groups).
    remove: the attribute goes, sequences included.
    remove_private: no tag; every private attribute goes except the blocks of `keep_creators`.
    date_shift: DA and DT values move by the patient's offset (pseudonyms.date_offset_days); without a tag,
    every DA and DT of the dataset.
    hash: each value becomes the keyed hash (upper-case hex) cut to the VR's length; a UI becomes a 2.25 UID.
    """

    op: str
    tag: str = ""
    value: str = ""
    pattern: str = ""
    keep_creators: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """What one destination receives. De-identification (PS3.15 Annex E Basic Profile with `options`) runs
    first; the operations then run in order on its result, so their templates see de-identified values."""

    name: str
    operations: tuple[Operation, ...] = ()
    deidentify: bool = False
    options: frozenset[str] = frozenset()
    allow_burned_in: bool = False
    pseudonyms: Mapping[str, str] | None = field(default=None, compare=False)


def template_fields(template: str) -> list[str]:
    """The keywords a `set` template names; ValueError for a malformed template."""
    names = []
    for _literal, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion or not name:
            raise ValueError(f"{{{name}}}: a template field is a bare keyword, without ! or :")
        names.append(name)
    return names


_GROUP_REFERENCE = re.compile(r"\\(\d+)|\\g<([^>]*)>")


def validate(profile: Profile) -> list[str]:
    """Every problem of the profile, one sentence each; an operation is named by its number (from 1), its op
    and its tag. An empty list means the profile can be used."""
    errors = [f"unknown option {option!r}" for option in sorted(profile.options - OPTIONS)]
    if profile.options and not profile.deidentify:
        errors.append("options apply to de-identification, which this profile does not do")
    if {annex_e.RETAIN_LONGITUDINAL_FULL_DATES, annex_e.RETAIN_LONGITUDINAL_MODIFIED_DATES} <= profile.options:
        errors.append("retain_longitudinal_full_dates and retain_longitudinal_modified_dates exclude each other")
    if profile.pseudonyms is not None and not profile.deidentify:
        errors.append("a pseudonym table is used by de-identification, which this profile does not do")
    for number, operation in enumerate(profile.operations, start=1):
        errors += [f"operation {number} ({operation.op} {operation.tag!r}): {e}" for e in _operation_errors(operation)]
    return errors


def _operation_errors(operation: Operation) -> list[str]:
    if operation.op not in OPS:
        return [f"unknown op; one of {', '.join(OPS)}"]
    if operation.keep_creators and operation.op != REMOVE_PRIVATE:
        return ["keep_creators belongs to remove_private"]
    if operation.op == REMOVE_PRIVATE:
        return ["remove_private takes no tag"] if operation.tag else []
    if operation.op == DATE_SHIFT and not operation.tag:
        return []
    try:
        path = paths.parse(operation.tag)
    except paths.PathError as exc:
        return [str(exc)]
    vr = paths.known_vr(path)
    if operation.op == SET:
        return _set_errors(operation.value, vr)
    if operation.op in (PREFIX, SUFFIX):
        errors = [] if operation.value else [f"{operation.op} needs a value"]
        return errors + _vr_errors(vr, TEXT_VRS)
    if operation.op == REPLACE:
        return _pattern_errors(operation.pattern, operation.value) + _vr_errors(vr, TEXT_VRS)
    if operation.op == DATE_SHIFT:
        return _vr_errors(vr, SHIFTABLE_VRS)
    if operation.op == HASH:
        return _vr_errors(vr, HASHABLE_VRS)
    return []


def _vr_errors(vr: str | None, allowed: frozenset[str]) -> list[str]:
    if vr is None or vr in allowed:
        return []
    return [f"the attribute's VR is {vr}; this op needs one of {', '.join(sorted(allowed))}"]


def _set_errors(template: str, vr: str | None) -> list[str]:
    try:
        names = template_fields(template)
    except ValueError as exc:
        return [f"template: {exc}"]
    errors = [f"the template names unknown keyword {name!r}" for name in names if tag_for_keyword(name) is None]
    if vr == "SQ":
        errors.append("set cannot write a sequence")
    elif not names and vr is not None and template:
        # A literal can be checked now; a template only once it is filled in.
        problem = value_problem(vr, template)
        if problem:
            errors.append(problem)
    return errors


def _pattern_errors(pattern: str, replacement: str) -> list[str]:
    if not pattern:
        return ["replace needs a pattern"]
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return [f"bad regex: {exc}"]
    errors = []
    for number, name in _GROUP_REFERENCE.findall(replacement):
        known = int(number) <= compiled.groups if number else (name in compiled.groupindex or name.isdigit())
        if not known:
            errors.append(f"the replacement refers to group {number or name!r}, which the pattern does not have")
    return errors


def value_problem(vr: str, value: str) -> str:
    """Why `value` is not valid for `vr`, without quoting it (it may be PHI); '' when it is valid."""
    for part in value.split("\\"):
        try:
            validate_value(vr, part, config.RAISE)
        except ValueError as exc:
            if "exceeds the maximum length" in str(exc):
                return f"the new value is longer than {vr} allows"
            return f"the new value is not a valid {vr} value"
    return ""
