"""QIDO-RS (PS3.18 10.6): a search's query parameters parsed into the query engine's `Query` (the same engine
as C-FIND, apps/archive/query.py), and its matches written as DICOM JSON (PS3.18 F.2). Pure functions: the
view authenticates, calls archive's `find()`, and answers.

Parameters (PS3.18 8.3.4): `{attribute}={value}` where the attribute is a keyword or eight hex digits, matched
as C-FIND matches (wildcards `*` `?`, date and time ranges, UID lists separated by `\\` or `,`); `limit`,
`offset`; `includefield` (keywords or tags, comma-separated or repeated, or `all`); `fuzzymatching`, accepted
and ignored (matching is literal; a Warning header says so when it was asked for).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from apps.archive.query import ATTRIBUTES, IMAGE, PATHS, SERIES, STUDY, Query, QueryError, query_make
from apps.ingest.inspect import UID_PATTERN

LIMIT, OFFSET, INCLUDE, FUZZY = "limit", "offset", "includefield", "fuzzymatching"
# PS3.18 Tables 10.6.3-3, -4 and -5: the attributes returned by default at each level, of those the router
# holds. Timezone Offset From UTC, Rows, Columns and the like are not held: they are not returned.
DEFAULT_RETURN = {
    STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances"),
    IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber"),
}
_UPPER = {STUDY: (), SERIES: (STUDY,), IMAGE: (SERIES, STUDY)}
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
# Attributes every match carries besides the engine's (PS3.18 Tables 10.6.3-3 to -5): all of them are held.
RETRIEVE_URL, AVAILABILITY = "RetrieveURL", "InstanceAvailability"
_EXTRA_VR = {RETRIEVE_URL: "UR", AVAILABILITY: "CS"}


@dataclass(frozen=True)
class Search:
    query: Query
    limit: int | None  # None: the server's own cap (QR_MAX_RESULTS)
    offset: int
    fuzzy: bool  # asked for, and not done

    def fields(self) -> list[str]:
        """The keywords each match carries, in order."""
        return self.query.returned()


def search_parse(
    *, level: str, params: Iterable[tuple[str, str]], study: str | None = None, series: str | None = None
) -> Search:
    """The search a request's query parameters ask for, at `level`, within the study and series of its URL.
    A parameter the router cannot honour raises QueryError, with a message for the caller."""
    limit, offset, fuzzy = None, 0, False
    filters: dict[str, str] = {}
    included: list[str] = []
    for name, value in params:
        if name == LIMIT:
            limit = _number(name, value, minimum=1)
        elif name == OFFSET:
            offset = _number(name, value, minimum=0)
        elif name == FUZZY:
            fuzzy = _boolean(name, value)
        elif name == INCLUDE:
            included += _included(level, value)
        else:
            keyword = _matchable(level, keyword_of(name))
            if keyword in filters:
                raise QueryError(f"{keyword} is given twice: give one value (a UID list separates UIDs by commas)")
            filters[keyword] = _value(keyword, value)
    for keyword, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
        if uid is None:
            continue
        if not _is_uid(uid):
            raise QueryError(f"the URL's {keyword} is not a valid UID")
        if keyword in filters:
            raise QueryError(f"{keyword} is in the URL already: it cannot be a query parameter too")
        filters[keyword] = uid
    shown = [k for lv in (level, *_UPPER[level]) if not _in_url(lv, study, series) for k in DEFAULT_RETURN[lv]]
    returned = [k for k in dict.fromkeys([*shown, *included]) if k not in filters]
    query = query_make(level=level, keys=[*filters.items(), *((k, "") for k in returned)])
    return Search(query=query, limit=limit, offset=offset, fuzzy=fuzzy)


def keyword_of(name: str) -> str:
    """The keyword a parameter names by keyword or by tag (eight hex digits)."""
    if "." in name:
        raise QueryError(f"{name}: matching on attributes inside sequences is not supported")
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise QueryError(f"{name} is not an attribute of the DICOM dictionary")
        return keyword
    if tag_for_keyword(name) is None:
        raise QueryError(f"{name} is neither a query parameter nor a DICOM attribute keyword")
    return name


def _matchable(level: str, keyword: str) -> str:
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None or not attribute.field or attribute.level not in PATHS[level]:
        can = sorted(k for k, a in ATTRIBUTES.items() if a.field and a.level in PATHS[level])
        raise QueryError(f"{keyword} cannot be matched in a {level.lower()} search; these can: {', '.join(can)}")
    return keyword


def _value(keyword: str, value: str) -> str:
    # PS3.18 8.3.4.1: a UID list may be separated by commas; DICOM separates values by backslashes.
    if ATTRIBUTES[keyword].vr == "UI" or keyword == "ModalitiesInStudy":
        return value.replace(",", "\\")
    return value


def _included(level: str, value: str) -> list[str]:
    """Keywords to return. One the router does not hold at this level is not returned (PS3.18 lets an origin
    server leave out attributes it does not support); one that is no DICOM attribute is an error."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if "all" in names:
        return [k for k, a in ATTRIBUTES.items() if a.level in PATHS[level]]
    keywords = [keyword_of(n) for n in names]
    return [k for k in keywords if k in ATTRIBUTES and ATTRIBUTES[k].level in PATHS[level]]


def _in_url(level: str, study: str | None, series: str | None) -> bool:
    return (level == STUDY and study is not None) or (level == SERIES and series is not None)


def _number(name: str, value: str, *, minimum: int) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise QueryError(f"{name} must be a whole number of at least {minimum}, not {value!r}")
    return int(value)


def _boolean(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise QueryError(f"{name} must be true or false, not {value!r}")
    return value.lower() == "true"


def _is_uid(value: str) -> bool:
    return len(value) <= 64 and UID_PATTERN.fullmatch(value) is not None


# -- DICOM JSON ---------------------------------------------------------------------------------------


def match_json(row: dict, fields: list[str], *, retrieve_url: str) -> dict:
    """One match as a DICOM JSON dataset (PS3.18 F.2): the fields the engine has a value or a column for, the
    Retrieve URL of the match and its availability (ONLINE: a purged instance never matches), by tag."""
    out = {}
    for keyword in fields:
        if keyword in row:
            out[_tag(keyword)] = element_json(ATTRIBUTES[keyword].vr, row[keyword])
    out[_tag(RETRIEVE_URL)] = element_json(_EXTRA_VR[RETRIEVE_URL], retrieve_url)
    out[_tag(AVAILABILITY)] = element_json(_EXTRA_VR[AVAILABILITY], "ONLINE")
    return dict(sorted(out.items()))


def element_json(vr: str, value) -> dict:
    """An attribute in DICOM JSON: no Value when empty; person names by component group; IS as numbers."""
    if value is None or value == "":
        return {"vr": vr}
    if isinstance(value, int):
        values: list = [value]
    elif vr == "UR":
        values = [value]
    else:
        values = [v for v in str(value).split("\\")]
    if vr == "PN":
        values = [_person_name(v) for v in values]
    elif vr == "IS":
        values = [int(v) if isinstance(v, int) or v.strip().lstrip("+-").isdigit() else None for v in values]
        if all(v is None for v in values):
            return {"vr": vr}  # a value that is not a number is not sent as one
    return {"vr": vr, "Value": values}


def _person_name(value: str) -> dict:
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return {k: v for k, v in groups.items() if v}


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"
