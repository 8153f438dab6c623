"""A multipart/related body read as it arrives, a part at a time, never whole.

python-multipart's push parser finds the boundaries (a `bytes.find` per chunk: about 5 GB/s here); each
part's bytes go to the sink made for it as soon as they are read, straight from the chunk read from the
request (a memoryview, no copy). Memory stays at one chunk whatever the size of a part or of the body.
"""

from collections.abc import Callable
from typing import BinaryIO, Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState

# Read from the request this much at a time.
CHUNK = 256 * 1024
# The headers a part may have, and their size: a DICOM part needs one or two (Content-Type, Content-Length).
MAX_PART_HEADERS = 16
MAX_HEADER_SIZE = 4096


class BodyError(Exception):
    """The body cannot be read to its end as multipart/related; the message says why (no PHI)."""


class Malformed(BodyError):
    pass


class TooLarge(BodyError):
    pass


class Part(Protocol):
    """Where one part's bytes go."""

    def write(self, data: memoryview) -> None: ...

    def end(self) -> None:
        """The part's closing boundary was read: all of it arrived."""

    def abandon(self) -> None:
        """The body stopped (cut short, malformed, too large) inside this part."""


def parts_read(stream: BinaryIO, *, boundary: str, max_bytes: int, new_part: Callable[[dict[str, str]], Part]) -> int:
    """Read `stream` to its end, calling `new_part(headers)` at each part (header names in lower case) and
    feeding it the part's bytes. Returns the number of parts read whole.

    Raises Malformed (bad framing, or the body ended before its closing boundary) or TooLarge (more than
    `max_bytes`); the part being read then is abandoned, the parts before it have ended normally.
    """
    reader = _Reader(new_part)
    parser = MultipartParser(
        boundary.encode("latin-1"),
        reader.callbacks(),
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_HEADER_SIZE,
    )
    total = 0
    try:
        while chunk := stream.read(CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(f"the body is larger than {max_bytes} bytes")
            parser.write(chunk)
        if parser.state != MultipartState.END:
            raise Malformed("the body ends before its closing boundary")
    except MultipartParseError as exc:
        reader.abandon()
        raise Malformed(f"not a multipart body: {exc}") from None
    except BaseException:
        reader.abandon()
        raise
    return reader.ended


class _Reader:
    """python-multipart's callbacks, turned into one Part per part."""

    def __init__(self, new_part: Callable[[dict[str, str]], Part]) -> None:
        self.new_part = new_part
        self.part: Part | None = None
        self.headers: dict[str, str] = {}
        self.field = bytearray()
        self.value = bytearray()
        self.ended = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self.field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_end(self) -> None:
        name = self.field.decode("latin-1").strip().lower()
        self.headers[name] = self.value.decode("latin-1").strip()
        self.field.clear()
        self.value.clear()

    def on_headers_finished(self) -> None:
        self.part = self.new_part(self.headers)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part is not None:
            self.part.write(memoryview(data)[start:end])

    def on_part_end(self) -> None:
        part, self.part = self.part, None
        if part is not None:
            self.ended += 1
            part.end()

    def abandon(self) -> None:
        part, self.part = self.part, None
        if part is not None:
            part.abandon()
