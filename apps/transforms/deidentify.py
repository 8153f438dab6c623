"""PS3.15 Annex E: the Basic Application Level Confidentiality Profile with options, applied to a dataset in
memory (the header before Pixel Data), deterministically: every replacement is a keyed function of the
original value and the profile's secret.

How the table's conditional actions are read: the engine does not know each IOD's attribute types, so it
keeps what the source's own encoding shows to be allowed. X/Z becomes Z (an empty value is valid for Type 2
and Type 3 alike); X/D, Z/D and X/Z/D keep an empty value empty and replace a non-empty one by a dummy (a
Type 1 attribute is never emptied). Sequences marked D, X/D, X/Z/D or X/Z/U* are cleaned item by item with
the same table, which replaces the UIDs they reference.
"""

import re
from collections.abc import Mapping

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from . import annex_e, pseudonyms
from .dates import shift_value
from .profile import Held
from .values import BINARY_VRS, FLOAT_VRS, INT_VRS, peek_vr, text, texts

KEEP, CLEAN, SHIFT = "K", "C", "S"
DATE_VRS = frozenset({"DA", "DT", "TM"})
SHIFTED_VRS = frozenset({"DA", "DT", "UN"})  # UN: decoded with its dictionary VR, which may be DA or DT
# Dummy values for D, per VR; dates far from any real study so that nobody mistakes them for one.
DUMMY_TEXT = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0", "DT": "19000101000000",
    "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED", "SH": "ANONYMIZED",
    "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED", "UR": "http://anonymized.invalid", "UT": "ANONYMIZED",
}  # fmt: skip
ACCESSION_LENGTH = 16  # SH
NO_PSEUDONYM = "no pseudonym for this patient in the profile's table"
# The options whose attributes are cleaned (C) rather than kept or removed (_Rules.action).
CLEANING_OPTIONS = frozenset(
    {annex_e.CLEAN_DESCRIPTORS, annex_e.RETAIN_DEVICE_IDENTITY, annex_e.RETAIN_PATIENT_CHARACTERISTICS}
)

PATIENT_ID = Tag(tag_for_keyword("PatientID"))
PATIENT_NAME = Tag(tag_for_keyword("PatientName"))
ACCESSION_NUMBER = Tag(tag_for_keyword("AccessionNumber"))


def check_burned_in(dataset: Dataset, sop_class_uid: str) -> None:
    """Held when the pixels may show burned-in text: de-identification does not touch pixels."""
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise Held("burned-in annotation: BurnedInAnnotation is YES, and the profile does not allow it")
    name = annex_e.BURNED_IN_SOP_CLASSES.get(sop_class_uid.strip())
    if name:
        raise Held(f"burned-in annotation likely: {name}, and the profile does not allow it")


def pseudonym_for(patient_id: str, table: Mapping[str, str] | None, secret: bytes) -> str:
    """The pseudonym for this Patient ID: from the table when the profile has one (Held when the patient is
    not in it), else the keyed hash. An empty Patient ID stays empty."""
    if table is not None:
        pseudonym = table.get(patient_id)
        if not pseudonym:
            raise Held(NO_PSEUDONYM)
        return pseudonym
    return pseudonyms.patient_pseudonym(patient_id, secret) if patient_id else ""


def deidentify(dataset: Dataset, *, options: frozenset[str], secret: bytes, pseudonym: str) -> None:
    """Apply the Basic Profile and `options` to `dataset` in place, then record how it was done."""
    patient_id = text(dataset.get(PATIENT_ID))
    accession = text(dataset.get(ACCESSION_NUMBER))
    rules = _Rules(options, secret, patient_id, _Cleaner.of(dataset, options))
    rules.apply(dataset)
    # Z allows a dummy: the pseudonym links the patient's studies, the keyed accession number a study's series.
    dataset.PatientID = pseudonym
    dataset.PatientName = pseudonym
    if accession:
        dataset.AccessionNumber = pseudonyms.keyed_hash(accession, secret, ACCESSION_LENGTH)
    _record_method(dataset, options)


class _Cleaner:
    """Clean (C): keep free text after removing this instance's own identifiers (names, IDs, accession
    number, birth date, and the institution unless it is retained). It cannot find identifiers of other
    people typed into the text; profiles that must be sure leave clean_descriptors off."""

    def __init__(self, words: set[str]) -> None:
        words = {w for w in words if len(w) >= 2}
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))
        self.pattern = re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.I) if words else None

    @classmethod
    def of(cls, dataset: Dataset, options: frozenset[str]) -> "_Cleaner":
        if not options & CLEANING_OPTIONS:
            return cls(set())  # nothing will be cleaned: reading the identifiers would only cost
        keywords = annex_e.IDENTIFYING_TEXT
        if annex_e.RETAIN_INSTITUTION_IDENTITY not in options:
            keywords += annex_e.INSTITUTION_TEXT
        words = set()
        for keyword in keywords:
            for value in texts(dataset[keyword]) if keyword in dataset else ():
                words.update(re.split(r"[\^=,\s]+", value))
        return cls(words)

    def clean(self, value: str) -> str:
        if self.pattern is None:
            return value
        return " ".join(self.pattern.sub(" ", value).split())


class _Rules:
    def __init__(self, options: frozenset[str], secret: bytes, patient_id: str, cleaner: _Cleaner) -> None:
        self.options = options
        self.secret = secret
        self.cleaner = cleaner
        self.days = 0
        if annex_e.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
            self.days = pseudonyms.date_offset_days(patient_id, secret)

    def action(self, tag: Tag) -> str | None:
        basic = annex_e.basic_action(tag)
        if basic is None:
            return None
        on = self.options.__contains__
        if on(annex_e.RETAIN_UIDS) and (basic == "U" or tag in annex_e.UID_SEQUENCES):
            return KEEP
        if on(annex_e.RETAIN_DEVICE_IDENTITY) and tag in annex_e.DEVICE_KEEP:
            return KEEP
        if on(annex_e.RETAIN_DEVICE_IDENTITY) and tag in annex_e.DEVICE_CLEAN:
            return CLEAN
        if on(annex_e.RETAIN_INSTITUTION_IDENTITY) and tag in annex_e.INSTITUTION_KEEP:
            return KEEP
        if on(annex_e.RETAIN_PATIENT_CHARACTERISTICS) and tag in annex_e.PATIENT_KEEP:
            return KEEP
        if on(annex_e.RETAIN_PATIENT_CHARACTERISTICS) and tag in annex_e.PATIENT_CLEAN:
            return CLEAN
        if _longitudinal(tag):
            if on(annex_e.RETAIN_LONGITUDINAL_FULL_DATES):
                return KEEP
            if on(annex_e.RETAIN_LONGITUDINAL_MODIFIED_DATES):
                return SHIFT
        if on(annex_e.CLEAN_DESCRIPTORS) and tag in annex_e.DESCRIPTORS:
            return CLEAN
        return basic

    def apply(self, dataset: Dataset) -> None:
        for tag in list(dataset.keys()):
            if tag.is_private:  # Basic Profile: X for every private attribute
                del dataset[tag]
                continue
            action = self.action(tag)
            if action == "X":
                del dataset[tag]
            elif peek_vr(dataset, tag) == "SQ":
                self._sequence(dataset[tag], action)
            elif action == SHIFT and peek_vr(dataset, tag) not in SHIFTED_VRS:
                continue  # times are kept (a whole-day shift keeps them true): not worth decoding
            elif action not in (None, KEEP):
                self._value(dataset[tag], action)

    def _sequence(self, element: DataElement, action: str | None) -> None:
        if action in ("Z", "X/Z"):
            element.value = Sequence()
            return
        for item in element.value or ():
            self.apply(item)

    def _value(self, element: DataElement, action: str | None) -> None:
        if action in (None, KEEP) or element.value is None:
            return
        if action in ("Z", "X/Z"):
            element.value = None
        elif action in ("U", "X/Z/U*"):
            if element.VR == "UI":
                element.value = "\\".join(pseudonyms.uid_pseudonym(v, self.secret) for v in texts(element))
        elif action == "D" or (action in ("Z/D", "X/D", "X/Z/D") and not _empty(element)):
            self._dummy(element)
        elif action == CLEAN and element.VR not in BINARY_VRS | INT_VRS | FLOAT_VRS:
            element.value = "\\".join(self.cleaner.clean(v) for v in texts(element))
        elif action == SHIFT and element.VR in ("DA", "DT"):
            element.value = "\\".join(shift_value(element.VR, v, self.days) for v in texts(element))

    def _dummy(self, element: DataElement) -> None:
        if element.VR == "UI":
            element.value = "\\".join(pseudonyms.uid_pseudonym(v, self.secret) for v in texts(element))
        elif element.VR in DUMMY_TEXT:
            element.value = DUMMY_TEXT[element.VR]
        elif element.VR in INT_VRS or element.VR in FLOAT_VRS:
            element.value = 0
        elif element.VR in BINARY_VRS:
            element.value = b"\0\0"
        # AT (a tag) identifies nobody: kept.


def _empty(element: DataElement) -> bool:
    value = element.value
    return value is None or value == "" or value == b"" or (isinstance(value, list) and not value)


def _longitudinal(tag: Tag) -> bool:
    if tag in annex_e.TIMEZONE:
        return True
    if tag in annex_e.DATES_NOT_LONGITUDINAL:
        return False
    try:
        return dictionary_VR(tag) in DATE_VRS
    except KeyError:
        return False


def _record_method(dataset: Dataset, options: frozenset[str]) -> None:
    """PS3.15 E.1.1: Patient Identity Removed, the method as text and as CID 7050 codes, and whether the
    longitudinal temporal information was kept, shifted or removed."""
    codes = [annex_e.BASIC_PROFILE_CODE] + sorted(annex_e.OPTION_CODES[o] for o in options)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [meaning for _value, meaning in codes]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    dataset.DeidentificationMethodCodeSequence = Sequence(items)
    if annex_e.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    elif annex_e.RETAIN_LONGITUDINAL_FULL_DATES in options:
        dataset.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        dataset.LongitudinalTemporalInformationModified = "REMOVED"
