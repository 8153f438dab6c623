"""Reading and writing element values as text, shared by coercion and de-identification."""

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from .profile import Held, value_problem

INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
FLOAT_VRS = frozenset({"FL", "FD"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def peek_vr(dataset: Dataset, tag: Tag) -> str:
    """The element's VR without decoding its value: untouched elements stay raw, so they cost nothing to
    check and are written back byte for byte."""
    vr = dataset.get_item(tag, keep_deferred=True).VR
    if vr is None:  # implicit VR: the dictionary says
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    return vr


def texts(element: DataElement) -> list[str]:
    """The values of a text element, one string each; [] when empty. Binary values have no text."""
    value = element.value
    if value is None or value == "" or isinstance(value, bytes | bytearray):
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) if v is not None else "" for v in value]
    return [str(value)]


def text(element: DataElement | None) -> str:
    return "" if element is None else "\\".join(texts(element))


def write(container: Dataset, tag: int, vr: str, values: list[str], where: str) -> None:
    """Store text `values` in `container`, creating the element when absent. Held when the result is not a
    valid value of the VR (too long, wrong characters): a malformed file is never sent."""
    joined = "\\".join(values)
    if vr in INT_VRS or vr in FLOAT_VRS:
        number = int if vr in INT_VRS else float
        try:
            value = [number(v) for v in values] if len(values) > 1 else (number(values[0]) if values else None)
        except ValueError:
            raise Held(f"{where}: the new value is not a number, as {vr} needs") from None
    else:
        problem = value_problem(vr, joined) if joined else ""
        if problem:
            raise Held(f"{where}: {problem}")
        value = joined
    if tag in container:
        container[tag].value = value
    else:
        container.add_new(tag, vr, value)
