"""Reading and writing element values as text, shared by coercion and de-identification."""

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .profile import Held, value_problem

INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
FLOAT_VRS = frozenset({"FL", "FD"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


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
