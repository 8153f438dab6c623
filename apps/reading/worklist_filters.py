"""The worklist's filters and search, parsed from a form or a stored preference into one clean value.

Pure: no database. Unknown values are dropped rather than refused, so a stored preference from an older
version or a hand-edited form still gives a usable worklist."""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from django.db.models import Q

PRIORITIES = ("STAT", "URGENT", "ROUTINE")
STATUSES = ("assigned", "acknowledged", "in_progress")
MAX_TEXT = 64  # DICOM's longest of these (LO) is 64 characters


@dataclass(frozen=True)
class WorklistFilters:
    priority: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    modality: str = ""
    institution: str = ""
    q: str = field(default="", repr=False)  # an accession number or a patient id: never in a repr, so never logged

    @property
    def active(self) -> bool:
        return any((self.priority, self.status, self.modality, self.institution, self.q))

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def query(self, prefix: str = "study__") -> Q:
        """The filters as one Q over assignments (prefix "study__") or studies (prefix "")."""
        q = Q()
        if self.priority:
            q &= Q(**{f"{prefix}priority__in": self.priority})
        if self.status and prefix:
            q &= Q(status__in=self.status)
        if self.modality:
            q &= Q(**{f"{prefix}modality__iexact": self.modality})
        if self.institution:
            q &= Q(**{f"{prefix}institution_name__icontains": self.institution})
        if self.q:
            # Accession numbers are typed in part; a patient id is matched whole (no fishing by prefix).
            q &= Q(**{f"{prefix}accession_number__icontains": self.q}) | Q(**{f"{prefix}patient_id": self.q})
        return q


def _values(data: Mapping, key: str) -> list[str]:
    if hasattr(data, "getlist"):
        values = data.getlist(key)
    else:
        value = data.get(key, [])
        values = value if isinstance(value, list | tuple) else [value]
    return [str(v) for v in values if v not in (None, "")]


def _text(data: Mapping, key: str) -> str:
    values = _values(data, key)
    return " ".join(values[0].split())[:MAX_TEXT] if values else ""


def filters_parse(data: Mapping) -> WorklistFilters:
    """Filters from a QueryDict (a form) or a plain dict (a stored preference); what is not understood is
    dropped. Priorities and modality are upper-cased, as DICOM writes them."""
    priorities = {v.upper() for v in _values(data, "priority")}
    statuses = {v.lower() for v in _values(data, "status")}
    return WorklistFilters(
        priority=tuple(p for p in PRIORITIES if p in priorities),
        status=tuple(s for s in STATUSES if s in statuses),
        modality=_text(data, "modality").upper()[:16],
        institution=_text(data, "institution"),
        q=_text(data, "q"),
    )
