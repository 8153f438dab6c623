"""Addressing attributes: a keyword (`AccessionNumber`), a tag (`(0008,0050)` or `0008,0050`), or a path into
sequences, each sequence step with the items it reaches: `RequestAttributesSequence[*].AccessionNumber`,
`(0040,0275)[0].(0008,0050)`. Items are counted from 0; `[*]` is every item. Paths reach existing items
only: a path never creates a sequence or an item.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

_SEGMENT = re.compile(r"(?P<name>\(?[0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)?|[A-Za-z][A-Za-z0-9]*)(?:\[(?P<index>\*|\d+)\])?")
ALL_ITEMS = -1

# Group 0002 is the file meta, written by the engine; Pixel Data and everything after it are copied as they
# are, never decoded: operations address the dataset before it.
FIRST_COPIED_TAG = 0x7FE00000


class PathError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    tag: int
    index: int | None  # None on the last step; ALL_ITEMS or an item number on sequence steps


@dataclass(frozen=True)
class TagPath:
    text: str
    steps: tuple[Step, ...]

    @property
    def tag(self) -> int:
        return self.steps[-1].tag

    def containers(self, dataset: Dataset) -> Iterator[Dataset]:
        """The datasets that hold (or would hold) the last step's attribute."""
        level = [dataset]
        for step in self.steps[:-1]:
            level = [item for ds in level for item in _items(ds, step)]
        yield from level


def _items(dataset: Dataset, step: Step) -> list[Dataset]:
    element = dataset.get(step.tag)
    if element is None or element.VR != "SQ" or not element.value:
        return []
    items = list(element.value)
    if step.index == ALL_ITEMS:
        return items
    return items[step.index : step.index + 1]


def parse(text: str) -> TagPath:
    """The path, or PathError saying what is wrong with it."""
    if not text:
        raise PathError("no tag given")
    segments = text.split(".")
    steps = []
    for number, segment in enumerate(segments, start=1):
        match = _SEGMENT.fullmatch(segment.strip())
        if match is None:
            raise PathError(f"{segment!r} is neither a keyword nor a tag like (0010,0020)")
        tag = _tag(match["name"])
        last = number == len(segments)
        index = match["index"]
        if last and index is not None:
            raise PathError(f"{segment!r}: an item index belongs to a sequence step, not the last one")
        if not last and index is None:
            raise PathError(f"{segment!r}: a sequence step needs [*] or [n]")
        if not last and _known_vr(tag) not in (None, "SQ"):
            raise PathError(f"{segment!r} is not a sequence")
        steps.append(Step(tag, None if last else (ALL_ITEMS if index == "*" else int(index))))
    if steps[0].tag >> 16 == 0x0002:
        raise PathError("the file meta (group 0002) is written by the engine")
    if steps[0].tag >= FIRST_COPIED_TAG:
        raise PathError("Pixel Data and what follows it are copied as they are")
    return TagPath(text, tuple(steps))


def _tag(name: str) -> int:
    if "," in name:
        if (name[0] == "(") != (name[-1] == ")"):
            raise PathError(f"{name!r}: unbalanced parentheses")
        group, element = name.strip("()").split(",")
        return Tag(int(group, 16), int(element, 16))
    tag = tag_for_keyword(name)
    if tag is None:
        raise PathError(f"unknown keyword {name!r}")
    return Tag(tag)


def _known_vr(tag: int) -> str | None:
    if Tag(tag).is_private:
        return None
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def known_vr(path: TagPath) -> str | None:
    """The dictionary VR of the addressed attribute; None for private and unknown tags."""
    return _known_vr(path.tag)


def describe(tag: int) -> tuple[str, str]:
    """('(gggg,eeee)', keyword or '') for change lists."""
    tag = Tag(tag)
    return f"({tag.group:04X},{tag.element:04X})", keyword_for_tag(tag)
