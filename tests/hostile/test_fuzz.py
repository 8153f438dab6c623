"""A property-based fuzzer against runscp as a real process.

pydicom's CT_small and MR_small (MR in its three encodings), and an RGB JPEG, are mutated: truncated
at any offset, VRs and lengths overwritten, bytes flipped or spliced in, sequences nested deep (closed or
not), UIDs made malformed or path-like (in the command too, so the dataset-versus-command check does not
hide them), group 0002 elements smuggled in, a whole Part 10 file with an executable header in its preamble
sent as the dataset, or sent under another transfer syntax. Each is sent by C-STORE as raw bytes, to one SCP
for the whole run. For every example:

- the SCP answers within a bound, stays alive, and a new association answers a C-ECHO;
- a success status only for a dataset that is fully parseable (dcmtk's dcmdump reads the stored file
  without error, pydicom reads its header) whose file is on disk byte for byte behind our own preamble
  and file meta, and recorded;
- a failure status (0xA900, 0xC000) otherwise, with nothing stored or recorded; a command that
  pynetdicom cannot take as a request (an empty UID, one over 64 characters) gets a prompt A-ABORT;
- no partial or temporary file is left, and every stored file has its row.

Derandomized and without an example database, so CI runs the same examples every time.
"""

import itertools
import logging
import struct
import subprocess
import time
from dataclasses import dataclass, field
from io import BytesIO

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage, Verification

from apps.ingest.inspect import UID_PATTERN
from apps.studies.headers import read_header
from apps.studies.models import ReceivedInstance

from ..conftest import require_tool
from ..support.dicom import dataset_bytes, shipped
from . import CONTENT_SEQUENCE, Aborted, RawAssociation, encode, sequence_bytes, store_command, uid_element

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns about each malformed value, as it should
]

BASES = {
    "ct": ("ct", CTImageStorage),
    "mr": ("mr", MRImageStorage),
    "mr_implicit": ("MR_small_implicit.dcm", MRImageStorage),
    "mr_big": ("MR_small_bigendian.dcm", MRImageStorage),
    "jpeg": ("jpeg", SecondaryCaptureImageStorage),  # encapsulated pixel data
}
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
CONTEXTS = [
    *((sop, ts) for sop in (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage) for ts in SYNTAXES),
    (SecondaryCaptureImageStorage, JPEGBaseline8Bit),
]
RESPONSE_BOUND = 10.0  # seconds for any answer
UID_ROOT = "1.2.826.0.1.3680043.9.7433.3"
NUMBERS = itertools.count(1)  # a fresh SOP Instance UID for each example
HOSTILE_UIDS = [
    "../../etc/passwd",
    "1.2.3/../x",
    "/abs/path",
    "..",
    "1.2.3\n",
    "1.2.3\x00x",
    "1.2.3 4",
    "1.2.3\\4.5",
    "1..2",
    ".1.2",
    "1.2.",
    "",
    " ",
    "1" * 65,
    "1.2." + "3" * 80,
    "\u00e9.1",
    "1.2.3;rm -rf /",
]
UID_KEYWORDS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"]
VR_CODES = [b"SQ", b"OB", b"UN", b"US", b"UL", b"LO", b"UI", b"OW", b"XX", b"\0\0", b"sq", b"  "]


@dataclass
class Example:
    base: str
    transfer: str  # the context it is sent under (usually the base's own)
    uid: tuple[str, str] | None = None  # (keyword, hostile value)
    nesting: tuple[int, bool, bool] | None = None  # depth, defined lengths, closed
    smuggle_meta: bool = False
    executable: bytes | None = None  # b"MZ" or b"\x7fELF": send a whole Part 10 file with that preamble
    mutations: list[tuple] = field(default_factory=list)


byte_mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    # A negative index aims inside sequences (item headers and the elements in items), a positive one anywhere.
    st.tuples(st.just("vr"), st.integers(-10_000, 10_000), st.sampled_from(VR_CODES)),
    st.tuples(
        st.just("length"),
        st.integers(-10_000, 10_000),
        st.one_of(st.sampled_from([0, 1, 3, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF]), st.integers(0, 2**32 - 1)),
        st.sampled_from([-1, 1, 0]),  # -1/+1: off by one from what it says; 0: the value drawn
    ),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("splice"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
)


hostile_uids = st.tuples(
    st.sampled_from(UID_KEYWORDS),
    st.sampled_from(HOSTILE_UIDS) | st.text(st.characters(codec="latin-1"), max_size=70),
)
nestings = st.tuples(st.integers(1, 40) | st.sampled_from([64, 500, 3000]), st.booleans(), st.booleans())


@st.composite
def examples(draw) -> Example:
    """Mostly one kind of damage at a time (so that some examples are valid and stored), sometimes several."""
    base = draw(st.sampled_from(sorted(BASES)))
    own = str(dcmread(shipped(BASES[base][0]), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    example = Example(base=base, transfer=own)
    damage = ["bytes", "uid", "nesting", "meta", "executable", "syntax"]
    one = st.sampled_from(["none", "none", *damage]).map(lambda kind: [kind])
    kinds = draw(st.one_of(one, one, st.lists(st.sampled_from(damage), min_size=2, max_size=4)))
    if "bytes" in kinds:
        example.mutations = draw(st.lists(byte_mutations, min_size=1, max_size=3))
    if "uid" in kinds:
        example.uid = draw(hostile_uids)
    if "nesting" in kinds:
        example.nesting = draw(nestings)
    example.smuggle_meta = "meta" in kinds
    if "executable" in kinds:
        example.executable = draw(st.sampled_from([b"MZ", b"\x7fELF"]))
    if "syntax" in kinds:
        example.transfer = draw(st.sampled_from(SYNTAXES))
    return example


LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


def header_offsets(raw: bytes, *, implicit: bool, little: bool) -> tuple[list[int], list[int]]:
    """Where element and item headers start, roughly: (everywhere, inside sequences). Everywhere: the
    top-level elements in order (until one of undefined length). Inside sequences: every item header
    found by its tag, and the first element of each item."""
    e = "<" if little else ">"
    item = struct.pack(e + "HH", 0xFFFE, 0xE000)
    items = [i for i in range(len(raw) - 8) if raw[i : i + 4] == item]
    nested = sorted({*items, *(i + 8 for i in items)})
    offsets = {0, *nested}
    pos = 0
    while pos + 12 <= len(raw):
        offsets.add(pos)
        vr = raw[pos + 4 : pos + 6]
        if implicit:
            length, size = struct.unpack(e + "L", raw[pos + 4 : pos + 8])[0], 8
        elif vr in LONG_VRS:
            length, size = struct.unpack(e + "L", raw[pos + 8 : pos + 12])[0], 12
        else:
            length, size = struct.unpack(e + "H", raw[pos + 6 : pos + 8])[0], 8
        if length == 0xFFFFFFFF:
            break
        pos += size + length
    return sorted(offsets), nested or [0]


def length_field(raw: bytes, at: int, *, implicit: bool, little: bool) -> tuple[int, str]:
    """Where the length of the header at `at` is, and its struct format."""
    is_item = struct.unpack("<H" if little else ">H", raw[at : at + 2])[0] == 0xFFFE
    if implicit or is_item:
        return at + 4, "L"
    return (at + 8, "L") if raw[at + 4 : at + 6] in LONG_VRS else (at + 6, "H")


def build(example: Example, number: int) -> tuple[str, str, bytes]:
    """The (SOP class, SOP instance UID) for the command and the dataset bytes to send."""
    name, sop_class = BASES[example.base]
    ds = dcmread(shipped(name))
    own = UID(ds.file_meta.TransferSyntaxUID)
    implicit, little = own.is_implicit_VR, own.is_little_endian
    sop_instance = f"{UID_ROOT}.{100_000 + number}"  # one length for all, no leading zero
    ds.SOPInstanceUID = sop_instance
    body = encode(ds, implicit=implicit, little=little)
    if example.uid:
        keyword, value = example.uid
        tag = Tag(keyword)
        # The value's bytes as they are (pydicom would strip whitespace), in place of the element.
        raw = uid_element(tag, value, implicit=implicit, little=little)
        after = encode(ds[tag + 1 :], implicit=implicit, little=little)
        body = encode(ds[:tag], implicit=implicit, little=little) + raw + after
        if keyword == "SOPInstanceUID":
            sop_instance = value  # the command says the same: only the SCP's own checks can refuse it
    if example.nesting:
        depth, defined, closed = example.nesting
        nested = sequence_bytes(depth, defined=defined, closed=closed, implicit=implicit, little=little)
        # Where the elements after the Content Sequence's tag start (the UIDs all come before it).
        at = len(body) - len(encode(ds[CONTENT_SEQUENCE + 1 :], implicit=implicit, little=little))
        body = body[:at] + nested + body[at:]
    if example.smuggle_meta:
        syntax = b"1.2.840.10008.1.2.2\0"  # big endian, whatever the dataset is
        e = "<" if little else ">"
        vr = b"" if implicit else b"UI" + struct.pack(e + "H", len(syntax))
        length = struct.pack(e + "L", len(syntax)) if implicit else b""
        body = struct.pack(e + "HH", 0x0002, 0x0010) + vr + length + syntax + body
    if example.executable:
        original = shipped(name).read_bytes()
        meta = original[128 : len(original) - len(dataset_bytes(shipped(name)))]
        body = example.executable.ljust(128, b"\x90") + meta + body
    offsets = header_offsets(body, implicit=implicit, little=little)
    for mutation in example.mutations:
        body = mutate(body, mutation, offsets, implicit=implicit, little=little)
    return sop_class, sop_instance, body


def mutate(
    body: bytes, mutation: tuple, offsets: tuple[list[int], list[int]], *, implicit: bool, little: bool
) -> bytes:
    kind = mutation[0]
    if not body:
        return body
    if kind == "truncate":
        return body[: int(mutation[1] * len(body))]
    if kind == "flip":
        at = int(mutation[1] * len(body))
        return body[:at] + bytes([body[at] ^ mutation[2]]) + body[at + 1 :]
    if kind == "splice":
        at = int(mutation[1] * len(body))
        return body[:at] + mutation[2] + body[at:]
    everywhere, nested = offsets
    aim = nested if mutation[1] < 0 else everywhere
    at = aim[abs(mutation[1]) % len(aim)]
    if at + 12 > len(body):  # an earlier mutation cut it short
        return body
    if kind == "vr":
        return body[: at + 4] + mutation[2] + body[at + 6 :]
    _, _, value, delta = mutation  # "length"
    where, form = length_field(body, at, implicit=implicit, little=little)
    e = ("<" if little else ">") + form
    size = struct.calcsize(e)
    if where + size > len(body):
        return body
    if delta:  # off by one from what it says
        value = struct.unpack(e, body[where : where + size])[0] + delta
    return body[:where] + struct.pack(e, value % (1 << 8 * size)) + body[where + size :]


def stored_files(storage) -> set[str]:
    folder = storage / "instances"
    return {str(path.relative_to(storage)) for path in folder.rglob("*") if path.is_file()}


def fully_parseable(path) -> bool:
    """Two readers that are not ours: dcmtk's (strict by default about structure) and the router's own
    header reader (pydicom), which the persist step uses."""
    dcmdump = subprocess.run([require_tool("dcmdump"), "-q", str(path)], capture_output=True, timeout=30)
    if dcmdump.returncode != 0:
        return False
    try:
        read_header(path)
    except Exception:  # noqa: BLE001
        return False
    return True


def pynetdicom_takes_the_command(sop_class: str, sop_instance: str) -> bool:
    """Whether the SCP's pynetdicom decodes this command into a valid C-STORE request (as it would)."""
    message = C_STORE_RQ()
    message.command_set = read_dataset(BytesIO(store_command(sop_class, sop_instance)), True, True)
    message.context_id = 1
    try:
        return message.message_to_primitive().is_valid_request
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def scp(start_scp, caplog):
    caplog.set_level(logging.ERROR, logger="pydicom")  # it warns about every malformed value we make
    proc, port = start_scp()
    return proc, port


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    # One SCP serves every example: the function-scoped fixture is meant to outlive them.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(example=examples())
def test_the_scp_keeps_custody_rules_whatever_it_is_sent(scp, storage, example):
    proc, port = scp
    sop_class, sop_instance, body = build(example, next(NUMBERS))
    note(f"{example}\n{len(body)} bytes: {body[:48].hex()}")
    rows_before = set(ReceivedInstance.objects.values_list("sop_instance_uid", flat=True))
    start = time.monotonic()
    with RawAssociation(port, CONTEXTS, timeout=RESPONSE_BOUND) as assoc:
        try:
            response = assoc.store(
                sop_class, example.transfer, sop_class=sop_class, sop_instance=sop_instance, dataset=body
            )
        except Aborted:
            response = None
        else:
            assoc.release()
    assert time.monotonic() - start < RESPONSE_BOUND
    if pynetdicom_takes_the_command(sop_class, sop_instance):
        assert response is not None, "the SCP aborted instead of answering"
    else:
        # A command pynetdicom cannot take as a request can have no C-STORE response: an abort, promptly.
        assert response is None
    status = int(response.Status) if response else None
    event("aborted" if status is None else f"status 0x{status:04X}")

    assert proc.alive(), proc.log()[-3000:]
    with RawAssociation(port, [(Verification, ImplicitVRLittleEndian)]) as probe:
        assert int(probe.echo().Status) == 0x0000
        probe.release()

    rows = ReceivedInstance.objects.exclude(sop_instance_uid__in=rows_before)
    if status == 0x0000:
        recorded = sop_instance.rstrip("\0 ")
        assert UID_PATTERN.fullmatch(recorded) and len(recorded) <= 64, f"success for the UID {sop_instance!r}"
        if recorded in rows_before:  # the same UID again: kept once, the new copy removed
            assert not rows.exists()
        else:
            row = rows.get()
            assert row.sop_instance_uid == recorded
            stored = storage / row.path
            assert stored.read_bytes()[:132] == b"\0" * 128 + b"DICM"  # our preamble, never the sender's
            assert dataset_bytes(stored) == body  # byte for byte
            assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == example.transfer
            assert fully_parseable(stored), f"stored but not parseable: {example}"
    elif status is not None:
        # Ours: 0xA900 (not what the command says), 0xC000 (cannot understand). Anything else, 0xC211
        # included (an exception in our handler), is a finding.
        assert status in (0xA900, 0xC000), f"status 0x{status:04X} {response.get('ErrorComment', '')}"
    if status != 0x0000:
        assert not rows.exists()
    assert stored_files(storage) == set(ReceivedInstance.objects.values_list("path", flat=True))
    assert list((storage / "tmp").iterdir()) == []
