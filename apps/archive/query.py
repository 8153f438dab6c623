"""One query engine with two faces (C-FIND and QIDO-RS): what the router holds, matched as PS3.4 C.2.2.2 says.

A query is a level (PATIENT, STUDY, SERIES, IMAGE), matching keys (keyword and value) and return keys. The
faces parse their own syntax into a `Query`; `search()` runs it over the studies whose files are still held
(a purged instance is not offered: it cannot be retrieved) and returns one dict per match, keyed by keyword.

Matching, per key (C.2.2.2):
- empty value: universal, matches everything (the key is only returned);
- UIDs: single value or a backslash-separated list;
- dates and times: single value or a range `A-B`, `-B`, `A-` (inclusive);
- text: single value, or a pattern with `*` (any run) and `?` (one character); `%` and `_` are literal;
  person names ignore case only where the setting asks for it (QR_FOLD_PERSON_NAMES);
- ModalitiesInStudy: any of the listed modalities is in the study.
Keys the router does not hold are returned empty and never match anything away (C.2.2.1.2 lets an SCP
ignore optional keys it does not support).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet

from apps.studies.headers import whole_seconds
from apps.studies.models import FileState, Instance, Series, Study

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
PATIENT_ROOT, STUDY_ROOT = "patient", "study"
MODEL_LEVELS = {PATIENT_ROOT: LEVELS, STUDY_ROOT: LEVELS[1:]}

# Failure statuses a face reports (PS3.4 C.4.1.1.4): the identifier names a level or a value we cannot match.
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


class QueryError(ValueError):
    def __init__(self, message: str, status: int = IDENTIFIER_DOES_NOT_MATCH) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Attribute:
    keyword: str
    vr: str
    level: str
    field: str = ""  # on the level's own row (Study for PATIENT and STUDY); empty: computed, or not matchable


def _attributes(level: str, *rows: tuple[str, str, str]) -> dict[str, Attribute]:
    return {keyword: Attribute(keyword, vr, level, name) for keyword, vr, name in rows}


ATTRIBUTES: dict[str, Attribute] = {
    **_attributes(
        PATIENT,
        ("PatientID", "LO", "patient_id"),
        ("PatientName", "PN", "patient_name"),
        ("PatientBirthDate", "DA", "patient_birth_date"),
        ("PatientSex", "CS", "patient_sex"),
        ("NumberOfPatientRelatedStudies", "IS", ""),
        ("NumberOfPatientRelatedSeries", "IS", ""),
        ("NumberOfPatientRelatedInstances", "IS", ""),
    ),
    **_attributes(
        STUDY,
        ("StudyInstanceUID", "UI", "study_instance_uid"),
        ("StudyDate", "DA", "study_date"),
        ("StudyTime", "TM", "study_time"),
        ("AccessionNumber", "SH", "accession_number"),
        ("StudyID", "SH", "study_id"),
        ("StudyDescription", "LO", "study_description"),
        ("ReferringPhysicianName", "PN", "referring_physician_name"),
        ("InstitutionName", "LO", "institution_name"),
        ("ModalitiesInStudy", "CS", "modalities"),
        ("NumberOfStudyRelatedSeries", "IS", ""),
        ("NumberOfStudyRelatedInstances", "IS", ""),
    ),
    **_attributes(
        SERIES,
        ("SeriesInstanceUID", "UI", "series_instance_uid"),
        ("Modality", "CS", "modality"),
        ("SeriesNumber", "IS", "series_number"),
        ("SeriesDescription", "LO", "series_description"),
        ("BodyPartExamined", "CS", "body_part"),
        ("NumberOfSeriesRelatedInstances", "IS", ""),
    ),
    **_attributes(
        IMAGE,
        ("SOPInstanceUID", "UI", "sop_instance_uid"),
        ("SOPClassUID", "UI", "sop_class_uid"),
        ("InstanceNumber", "IS", "instance_number"),
    ),
}
UNIQUE_KEYS = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}
# Where each level's attributes are, seen from the row of the level queried (PATIENT rows are Study rows).
PATHS = {
    PATIENT: {PATIENT: ""},
    STUDY: {PATIENT: "", STUDY: ""},
    SERIES: {PATIENT: "study__", STUDY: "study__", SERIES: ""},
    IMAGE: {PATIENT: "study__", STUDY: "study__", SERIES: "series__", IMAGE: ""},
}
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


@dataclass(frozen=True)
class Query:
    level: str
    model: str = STUDY_ROOT
    keys: tuple[tuple[str, str], ...] = ()  # (keyword, value): every key of the identifier, matching or not
    extra: tuple[str, ...] = field(default=())  # keywords asked for that the router does not hold

    def matching(self) -> list[tuple[Attribute, str]]:
        """The keys that restrict the matches: held attributes of this level or above, with a value."""
        reachable = PATHS[self.level]
        return [
            (ATTRIBUTES[k], v)
            for k, v in self.keys
            if v and k in ATTRIBUTES and ATTRIBUTES[k].level in reachable and ATTRIBUTES[k].field
        ]

    def returned(self) -> list[str]:
        """Return keys, in order: the unique keys of this level and above, then what was asked."""
        unique = [
            UNIQUE_KEYS[level] for level in PATHS[self.level] if not (self.model == STUDY_ROOT and level == PATIENT)
        ]
        asked = [k for k, _ in self.keys]
        return list(dict.fromkeys([*unique, *asked, *self.extra]))


def query_make(*, level: str, model: str = STUDY_ROOT, keys: Iterable[tuple[str, str]] = (), extra=()) -> Query:
    level = level.strip().upper()
    if model not in MODEL_LEVELS:
        raise QueryError(f"unknown information model {model!r}")
    if level not in MODEL_LEVELS[model]:
        raise QueryError(f"level {level or '(none)'} is not one of {', '.join(MODEL_LEVELS[model])} in this model")
    query = Query(level=level, model=model, keys=tuple(keys), extra=tuple(extra))
    for attribute, value in query.matching():
        condition(attribute, value, path="")  # a malformed value fails here, before any row is read
    return query


# -- matching: one key to one condition ---------------------------------------------------------------


def condition(attribute: Attribute, value: str, *, path: str, fold_person_names: bool = False) -> Q | None:
    """The condition a key's value sets on `path + attribute.field`; None for universal matching."""
    value = value.strip() if attribute.vr != "PN" else value.rstrip()
    if not value or value == "*":
        return None
    name = path + attribute.field
    if attribute.vr == "UI":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        return Q(**{name: uids[0]}) if len(uids) == 1 else Q(**{f"{name}__in": uids})
    if attribute.vr == "DA":
        return _range(name, value, _date_bound, "date")
    if attribute.vr == "TM":
        return _range(name, value, _time_bound, "time")
    if attribute.keyword == "ModalitiesInStudy":
        return None  # matched by `_modalities`: against the study's series
    fold = fold_person_names and attribute.vr == "PN"
    return _text(name, value, fold=fold)


def _text(name: str, value: str, *, fold: bool) -> Q:
    if "*" not in value and "?" not in value:
        return Q(**{f"{name}__{'iexact' if fold else 'exact'}": value})
    stem = value.rstrip("*")
    if "*" not in stem and "?" not in stem:
        # A trailing wildcard only: a prefix, which the database can match from an index.
        return Q(**{f"{name}__{'istartswith' if fold else 'startswith'}": stem})
    pattern = "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value) + "$"
    return Q(**{f"{name}__{'iregex' if fold else 'regex'}": pattern})


def _range(name: str, value: str, bound, kind: str) -> Q:
    if "-" not in value:
        return Q(**{name: bound(value, kind, upper=False)})
    low, _, high = value.partition("-")
    if not low and not high:
        raise QueryError(f"{kind} range {value!r} has no bound")
    q = Q()
    if low:
        q &= Q(**{f"{name}__gte": bound(low, kind, upper=False)})
    if high:
        q &= Q(**{f"{name}__lte": bound(high, kind, upper=True)})
    # Held values are never empty where a range matched: an empty date is not "before" every date.
    return q & ~Q(**{name: ""})


def _date_bound(value: str, kind: str, *, upper: bool) -> str:
    value = value.strip().replace(".", "")  # the old ACR-NEMA form 2024.01.31
    if not _DATE.fullmatch(value):
        raise QueryError(f"{kind} {value!r} is not YYYYMMDD")
    return value


def _time_bound(value: str, kind: str, *, upper: bool) -> str:
    value = value.strip().replace(":", "")
    if not _TIME.fullmatch(value):
        raise QueryError(f"{kind} {value!r} is not HH[MM[SS[.FFFFFF]]]")
    if upper and "." not in value:
        # "-10" means up to 10:59:59.999999, "-1030" up to 10:30:59.999999: a bound covers its whole unit.
        return value + "595959"[len(value) :] + ".999999"
    return whole_seconds(value)


def _modalities(query: Query, study_ref: str) -> Q | None:
    values = [v.strip() for k, raw in query.keys if k == "ModalitiesInStudy" for v in raw.split("\\") if v.strip()]
    if not values or "*" in values:
        return None
    return Q(Exists(Series.objects.filter(study=OuterRef(study_ref), modality__in=values)))


# -- running a query ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    rows: list[dict]
    more: bool  # matches were left out (the limit); a C-FIND says so with its final status


def search(query: Query, *, limit: int, offset: int = 0, fold_person_names: bool = False) -> Results:
    """The matches of `query`, at most `limit` of them from `offset`, as dicts keyed by keyword."""
    rows_of = {PATIENT: _patients, STUDY: _studies, SERIES: _series, IMAGE: _instances}[query.level]
    rows = rows_of(query, conditions(query, query.level, fold_person_names=fold_person_names), limit + 1, offset)
    more = len(rows) > limit
    rows = rows[:limit]
    _add_counts(query, rows)
    return Results(rows=[_keyed(query, row) for row in rows], more=more)


def conditions(query: Query, at: str, *, fold_person_names: bool = False) -> Q:
    """The query's matching keys as one condition on the rows of level `at` (IMAGE: Instance rows)."""
    q = Q()
    for attribute, value in query.matching():
        path = PATHS[at][attribute.level]
        if (c := condition(attribute, value, path=path, fold_person_names=fold_person_names)) is not None:
            q &= c
    return q


def _held_studies() -> Q:
    return Q(Exists(Instance.objects.filter(study=OuterRef("pk"), file_state=FileState.STORED)))


_STUDY_FIELDS = [a.field for a in ATTRIBUTES.values() if a.level in (PATIENT, STUDY) and a.field]
_SERIES_FIELDS = [a.field for a in ATTRIBUTES.values() if a.level == SERIES and a.field]
_IMAGE_FIELDS = [a.field for a in ATTRIBUTES.values() if a.level == IMAGE and a.field]


def _with_modalities(queryset: QuerySet, query: Query, study_ref: str) -> QuerySet:
    modalities = _modalities(query, study_ref)
    return queryset.filter(modalities) if modalities is not None else queryset


def _patients(query: Query, q: Q, limit: int, offset: int) -> list[dict]:
    studies = _with_modalities(Study.objects.filter(_held_studies(), q), query, "pk")
    names = {f"_{f}": Max(f) for f in ("patient_name", "patient_birth_date", "patient_sex")}
    rows = studies.values("patient_id").annotate(**names).order_by("patient_id")[offset : offset + limit]
    return [{name.lstrip("_"): value for name, value in row.items()} | {"_level": PATIENT} for row in rows]


def _studies(query: Query, q: Q, limit: int, offset: int) -> list[dict]:
    studies = _with_modalities(Study.objects.filter(_held_studies(), q), query, "pk")
    # Newest received first: a capped answer keeps the studies a caller most likely wants.
    rows = studies.order_by("-pk").values("pk", *_STUDY_FIELDS)[offset : offset + limit]
    return [{**row, "_level": STUDY} for row in rows]


def _series(query: Query, q: Q, limit: int, offset: int) -> list[dict]:
    held = Exists(Instance.objects.filter(series=OuterRef("pk"), file_state=FileState.STORED))
    series = _with_modalities(Series.objects.filter(held, q), query, "study")
    study_fields = [f"study__{f}" for f in _STUDY_FIELDS]
    rows = series.order_by("pk").values("pk", *_SERIES_FIELDS, *study_fields)[offset : offset + limit]
    return [{**_unprefixed(row), "_level": SERIES} for row in rows]


def _instances(query: Query, q: Q, limit: int, offset: int) -> list[dict]:
    instances = _with_modalities(Instance.objects.filter(q, file_state=FileState.STORED), query, "study")
    study_fields = [f"study__{f}" for f in _STUDY_FIELDS]
    series_fields = [f"series__{f}" for f in _SERIES_FIELDS]
    rows = instances.order_by("pk").values("pk", *_IMAGE_FIELDS, *series_fields, *study_fields)
    return [{**_unprefixed(row), "_level": IMAGE} for row in rows[offset : offset + limit]]


def _unprefixed(row: dict) -> dict:
    return {name.rpartition("__")[2]: value for name, value in row.items()}


def _add_counts(query: Query, rows: list[dict]) -> None:
    """The Number Of ... Related attributes asked for, counting held instances only, for these rows alone."""
    asked = {k for k, _ in query.keys}
    stored = Instance.objects.filter(file_state=FileState.STORED)
    if query.level == PATIENT and asked & {k for k in ATTRIBUTES if k.startswith("NumberOfPatientRelated")}:
        counts = (
            stored.filter(study__patient_id__in=[r["patient_id"] for r in rows])
            .values("study__patient_id")
            .annotate(studies=Count("study", distinct=True), series=Count("series", distinct=True), n=Count("pk"))
        )
        by = {c["study__patient_id"]: c for c in counts}
        for row in rows:
            c = by.get(row["patient_id"], {})
            row["NumberOfPatientRelatedStudies"] = c.get("studies", 0)
            row["NumberOfPatientRelatedSeries"] = c.get("series", 0)
            row["NumberOfPatientRelatedInstances"] = c.get("n", 0)
    if query.level == STUDY and asked & {"NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}:
        counts = (
            stored.filter(study_id__in=[r["pk"] for r in rows])
            .values("study_id")
            .annotate(series=Count("series", distinct=True), n=Count("pk"))
        )
        by = {c["study_id"]: c for c in counts}
        for row in rows:
            row["NumberOfStudyRelatedSeries"] = by.get(row["pk"], {}).get("series", 0)
            row["NumberOfStudyRelatedInstances"] = by.get(row["pk"], {}).get("n", 0)
    if query.level == SERIES and "NumberOfSeriesRelatedInstances" in asked:
        counts = stored.filter(series_id__in=[r["pk"] for r in rows]).values("series_id").annotate(n=Count("pk"))
        by = {c["series_id"]: c["n"] for c in counts}
        for row in rows:
            row["NumberOfSeriesRelatedInstances"] = by.get(row["pk"], 0)


def _keyed(query: Query, row: dict) -> dict:
    """A match as {keyword: value} for the return keys the router holds at this level and above."""
    reachable = PATHS[query.level]
    out = {}
    for keyword, attribute in ATTRIBUTES.items():
        if attribute.level not in reachable:
            continue
        if attribute.field and attribute.field in row:
            out[keyword] = row[attribute.field]
        elif keyword in row:
            out[keyword] = row[keyword]
    return out
