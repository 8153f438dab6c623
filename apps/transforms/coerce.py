"""The coercion operations, applied in order to a dataset in memory (the header before Pixel Data)."""

import re
import string

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from . import paths, pseudonyms
from .dates import shift_value
from .profile import (
    DATE_SHIFT,
    HASH,
    HASHABLE_VRS,
    PREFIX,
    REMOVE,
    REMOVE_PRIVATE,
    REPLACE,
    SET,
    SHIFTABLE_VRS,
    SUFFIX,
    TEXT_VRS,
    Held,
    Operation,
)
from .values import FLOAT_VRS, INT_VRS, peek_vr, text, texts, write

# The longest a keyed hash may be in each VR (hex digits); 64 is the whole SHA-256.
HASH_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "LT": 64, "ST": 64, "UC": 64, "UT": 64}
SETTABLE_VRS = TEXT_VRS | INT_VRS | FLOAT_VRS


def apply_operations(dataset: Dataset, operations: tuple[Operation, ...], *, secret: bytes, patient_id: str) -> None:
    """Apply each operation in order. `patient_id` is the instance's original Patient ID: date shifts use its
    offset even after de-identification replaced it."""
    for number, operation in enumerate(operations, start=1):
        where = f"operation {number} ({operation.op} {operation.tag!r})"
        if operation.op == REMOVE_PRIVATE:
            remove_private(dataset, frozenset(operation.keep_creators))
        elif operation.op == DATE_SHIFT and not operation.tag:
            shift_all_dates(dataset, pseudonyms.date_offset_days(patient_id, secret))
        else:
            path = paths.parse(operation.tag)
            for container in list(path.containers(dataset)):
                _apply(container, dataset, path.tag, operation, where, secret=secret, patient_id=patient_id)


def _apply(
    container: Dataset, root: Dataset, tag: int, operation: Operation, where: str, *, secret: bytes, patient_id: str
) -> None:
    if operation.op == REMOVE:
        if tag in container:
            del container[tag]
        return
    if operation.op == SET:
        vr = container[tag].VR if tag in container else _dictionary_vr(tag)
        if vr is None:  # an absent private attribute: its VR is unknown, so it cannot be created
            return
        _require(vr, SETTABLE_VRS, where)
        write(container, tag, vr, render(operation.value, container, root).split("\\"), where)
        return
    if tag not in container:
        return
    element = container[tag]
    values = texts(element)
    if not values:
        return
    if operation.op in (PREFIX, SUFFIX):
        _require(element.VR, TEXT_VRS, where)
        new = [(operation.value + v if operation.op == PREFIX else v + operation.value) if v else v for v in values]
    elif operation.op == REPLACE:
        _require(element.VR, TEXT_VRS, where)
        new = [re.sub(operation.pattern, operation.value, v) for v in values]
    elif operation.op == DATE_SHIFT:
        _require(element.VR, SHIFTABLE_VRS, where)
        days = pseudonyms.date_offset_days(patient_id, secret)
        new = [shift_value(element.VR, v, days) for v in values]
    elif operation.op == HASH:
        _require(element.VR, HASHABLE_VRS, where)
        new = [hash_value(element.VR, v, secret) if v else v for v in values]
    else:  # validate() refuses unknown ops before any file is read
        raise ValueError(f"{where}: unknown op")
    write(container, tag, element.VR, new, where)


def _require(vr: str, allowed: frozenset[str], where: str) -> None:
    if vr not in allowed:
        raise Held(f"{where}: the attribute's VR is {vr} in this instance")


def _dictionary_vr(tag: int) -> str | None:
    if Tag(tag).is_private:
        return None
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def hash_value(vr: str, value: str, secret: bytes) -> str:
    if vr == "UI":
        return pseudonyms.uid_pseudonym(value, secret)
    return pseudonyms.keyed_hash(value, secret, HASH_LENGTH[vr])


def render(template: str, container: Dataset, root: Dataset) -> str:
    """Fill `{Keyword}` fields from the item the attribute is in, else from the top-level dataset; an absent
    attribute gives ''. Multiple values are joined with a backslash, as DICOM writes them."""
    parts = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            tag = tag_for_keyword(name)
            source = container if tag in container else root
            parts.append(text(source.get(tag)))
    return "".join(parts)


def shift_all_dates(dataset: Dataset, days: int) -> None:
    for tag in list(dataset.keys()):
        vr = peek_vr(dataset, tag)
        if vr == "SQ":
            for item in dataset[tag].value or ():
                shift_all_dates(item, days)
        elif vr in SHIFTABLE_VRS and texts(dataset[tag]):
            element = dataset[tag]
            element.value = "\\".join(shift_value(element.VR, v, days) for v in texts(element))


def remove_private(dataset: Dataset, keep_creators: frozenset[str]) -> None:
    """Remove every private attribute except the blocks reserved by a creator in `keep_creators` (and their
    creator elements); then the same inside every remaining sequence item."""
    kept_blocks: set[tuple[int, int]] = set()
    for tag in list(dataset.keys()):
        if tag.is_private and 0x0010 <= tag.element <= 0x00FF and creator_name(dataset[tag].value) in keep_creators:
            kept_blocks.add((tag.group, tag.element))
    for tag in list(dataset.keys()):
        if tag.is_private and not _kept(tag, kept_blocks):
            del dataset[tag]
    for tag in list(dataset.keys()):
        if peek_vr(dataset, tag) == "SQ":
            for item in dataset[tag].value or ():
                remove_private(item, keep_creators)


def _kept(tag: Tag, kept_blocks: set[tuple[int, int]]) -> bool:
    if 0x0010 <= tag.element <= 0x00FF:
        return (tag.group, tag.element) in kept_blocks
    return tag.element >= 0x1000 and (tag.group, tag.element >> 8) in kept_blocks


def creator_name(value: object) -> str:
    """A private creator's name; implicit VR files may hand it over as bytes."""
    if isinstance(value, bytes | bytearray):
        value = value.decode("latin-1")
    return str(value or "").strip(" \0")
