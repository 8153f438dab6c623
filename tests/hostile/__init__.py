"""A hostile peer's tools: raw PDUs, and a DICOM requestor on a plain socket.

`RawAssociation` sends exactly the bytes it is given (command sets included, so a command can carry the
same malformed UID as its dataset) and waits for each answer in the test's own thread with its own
deadline. pynetdicom's SCU is not used for this: its threads occasionally lose a C-STORE response (see
DESIGN.md), which a fuzzer would take for an SCP that hangs.
"""

import contextlib
import socket
import struct
import warnings
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

CONTENT_SEQUENCE = 0x0040A730
ASSOCIATE_AC, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x02, 0x04, 0x05, 0x06, 0x07
C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030
DATASET_PRESENT, NO_DATASET = 0x0000, 0x0101


class Aborted(Exception):
    """The SCP sent an A-ABORT."""


def associate_rq(
    contexts: list[tuple[str, str]] = ((Verification, ImplicitVRLittleEndian),),
    *,
    calling: str = "HOSTILE",
    called: str = "ROUTER",
    max_pdu: int = 16382,
) -> bytes:
    """A valid A-ASSOCIATE-RQ, one presentation context (IDs 1, 3, 5, ...) per (abstract, transfer) syntax."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed = []
    for number, (abstract, transfer) in enumerate(contexts):
        context = build_context(abstract, [transfer])
        context.context_id = 2 * number + 1
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = read_exactly(sock, 6)
    pdu_type, _, length = struct.unpack(">BBL", header)
    return pdu_type, read_exactly(sock, length)


def encode(ds: Dataset, *, implicit: bool, little: bool) -> bytes:
    """Encode whatever the dataset holds, valid or not (pydicom only warns about bad values)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(fp, ds)
    return fp.getvalue()


COMMAND_ELEMENTS = {  # keyword: (element of group 0000, VR)
    "AffectedSOPClassUID": (0x0002, "UI"),
    "CommandField": (0x0100, "US"),
    "MessageID": (0x0110, "US"),
    "Priority": (0x0700, "US"),
    "CommandDataSetType": (0x0800, "US"),
    "AffectedSOPInstanceUID": (0x1000, "UI"),
}


def text_value(value: str) -> bytes:
    """A UI value's bytes exactly as given (no tidying), padded to an even length with a NUL."""
    data = value.encode("latin-1")
    return data + b"\0" * (len(data) % 2)


def uid_element(tag: int, value: str, *, implicit: bool, little: bool) -> bytes:
    e = "<" if little else ">"
    data = text_value(value)
    header = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return header + struct.pack(e + "L", len(data)) + data
    return header + b"UI" + struct.pack(e + "H", len(data)) + data


def command_set(**elements) -> bytes:
    """A DIMSE command set (Implicit VR Little Endian) with its group length, written by hand so a UID
    goes out exactly as given (pydicom would strip its whitespace)."""
    body = b""
    for keyword, value in sorted(elements.items(), key=lambda item: COMMAND_ELEMENTS[item[0]][0]):
        element, vr = COMMAND_ELEMENTS[keyword]
        data = struct.pack("<H", value) if vr == "US" else text_value(str(value))
        body += struct.pack("<HHL", 0x0000, element, len(data)) + data
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return command_set(
        AffectedSOPClassUID=sop_class,
        CommandField=C_STORE_RQ,
        MessageID=message_id,
        Priority=0,
        CommandDataSetType=DATASET_PRESENT,
        AffectedSOPInstanceUID=sop_instance,
    )


class RawAssociation:
    def __init__(self, port: int, contexts: list[tuple[str, str]], *, timeout: float = 10.0) -> None:
        self.contexts = {
            str(abstract) + "|" + str(transfer): 2 * n + 1 for n, (abstract, transfer) in enumerate(contexts)
        }
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(associate_rq(contexts, calling="FUZZER"))
        pdu_type, body = read_pdu(self.sock)
        if pdu_type != ASSOCIATE_AC:
            self.sock.close()
            raise ConnectionError(f"association not accepted (PDU type 0x{pdu_type:02X})")
        accept = A_ASSOCIATE_AC()
        accept.decode(pdu_header(pdu_type, len(body)) + body)
        primitive = accept.to_primitive()
        self.accepted = {
            cx.context_id for cx in primitive.presentation_context_definition_results_list if cx.result == 0
        }
        self.max_pdu = primitive.maximum_length_received or 16382
        self.message_id = 0

    def __enter__(self) -> "RawAssociation":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def context_id(self, abstract: str, transfer: str) -> int:
        context_id = self.contexts[f"{abstract}|{transfer}"]
        assert context_id in self.accepted, f"context {abstract} / {transfer} was not accepted"
        return context_id

    def store(self, abstract: str, transfer: str, *, sop_class: str, sop_instance: str, dataset: bytes) -> Dataset:
        """Send a C-STORE of `dataset`, exactly these bytes; return the response's command set.

        Raises Aborted when the SCP aborts (or drops) the association instead of answering."""
        self.message_id += 1
        context_id = self.context_id(abstract, transfer)
        self._send(context_id, store_command(sop_class, sop_instance, self.message_id), is_command=True)
        # The SCP may abort on the command alone: its A-ABORT is then waiting to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(context_id, dataset, is_command=False)
        return self._response()

    def echo(self) -> Dataset:
        self.message_id += 1
        command = command_set(
            AffectedSOPClassUID=Verification,
            CommandField=C_ECHO_RQ,
            MessageID=self.message_id,
            CommandDataSetType=NO_DATASET,
        )
        self._send(self.context_id(Verification, ImplicitVRLittleEndian), command, is_command=True)
        return self._response()

    def release(self) -> None:
        self.sock.sendall(pdu_header(RELEASE_RQ, 4) + b"\0" * 4)
        pdu_type, _ = read_pdu(self.sock)
        assert pdu_type == RELEASE_RP, f"PDU type 0x{pdu_type:02X} instead of A-RELEASE-RP"
        self.sock.close()

    def _send(self, context_id: int, data: bytes, *, is_command: bool) -> None:
        size = self.max_pdu - 6  # a PDV item's length field and header bytes count against the maximum
        pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for number, piece in enumerate(pieces):
            control = (1 if is_command else 0) | (2 if number == len(pieces) - 1 else 0)
            pdv = struct.pack(">LBB", len(piece) + 2, context_id, control) + piece
            self.sock.sendall(pdu_header(P_DATA_TF, len(pdv)) + pdv)

    def _response(self) -> Dataset:
        command = b""
        while True:
            try:
                pdu_type, body = read_pdu(self.sock)
            except (ConnectionResetError, ConnectionError) as exc:
                raise Aborted(f"connection closed: {exc}") from exc
            if pdu_type == ABORT:
                raise Aborted(body.hex())
            assert pdu_type == P_DATA_TF, f"PDU type 0x{pdu_type:02X} instead of P-DATA-TF"
            pos = 0
            while pos < len(body):
                length, _, control = struct.unpack(">LBB", body[pos : pos + 6])
                data, pos = body[pos + 6 : pos + 4 + length], pos + 4 + length
                if control & 1:
                    command += data
                    if control & 2:
                        return read_dataset(BytesIO(command), True, True)


def sequence_bytes(depth: int, *, defined: bool, closed: bool, implicit: bool, little: bool) -> bytes:
    """`depth` Content Sequences, each the one item of the one above; built from the inside out."""
    e = "<" if little else ">"

    def header(tag: int, length: int, vr: bytes | None) -> bytes:
        group_element = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
        if vr is None:  # items and delimiters, and implicit VR
            return group_element + struct.pack(e + "L", length)
        return group_element + vr + b"\0\0" + struct.pack(e + "L", length)

    inner = b""
    for _ in range(depth):
        if defined:
            item = header(0xFFFEE000, len(inner), None) + inner
            inner = header(CONTENT_SEQUENCE, len(item), None if implicit else b"SQ") + item
        else:
            item = header(0xFFFEE000, 0xFFFFFFFF, None) + inner + header(0xFFFEE00D, 0, None)
            sq = header(CONTENT_SEQUENCE, 0xFFFFFFFF, None if implicit else b"SQ")
            inner = sq + item + header(0xFFFEE0DD, 0, None)
    if not closed:
        inner = inner[:-8] if not defined else inner + b"\0" * 3  # a delimiter missing, or stray bytes
    return inner
