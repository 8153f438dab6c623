"""The PROXY protocol header parser (v1 and v2), and which addresses may send one."""

import socket
import struct

import pytest

from apps.ingest.proxy_protocol import V2_SIGNATURE, Balancers, HeaderError, Source, read

PDU = b"\x01\x00\x00\x00\x00\xcd"  # the start of an A-ASSOCIATE-RQ: what follows a header


class Stream:
    """`receive(n)` over bytes, as the PDU guard's: exactly n bytes or EOFError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def receive(self, size: int) -> bytes:
        if self.position + size > len(self.data):
            raise EOFError
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    @property
    def rest(self) -> bytes:
        return self.data[self.position :]


def v2(command: int, family: int, payload: bytes, *, declared: int | None = None) -> bytes:
    length = len(payload) if declared is None else declared
    return V2_SIGNATURE + bytes([command, family]) + struct.pack(">H", length) + payload


def tcp4(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    return socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack(">HH", source_port, destination_port)


def parsed(data: bytes) -> tuple[Source, bytes]:
    stream = Stream(data)
    return read(stream.receive), stream.rest


def test_it_reads_a_v1_tcp4_header_and_not_a_byte_more():
    assert parsed(b"PROXY TCP4 192.0.2.7 10.1.0.11 51234 11112\r\n" + PDU) == (Source("192.0.2.7", 51234), PDU)


def test_it_reads_a_v1_tcp6_header():
    source, rest = parsed(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 11112\r\n" + PDU)
    assert source == Source("2001:db8::7", 40000) and rest == PDU


def test_a_v1_unknown_header_names_no_client():
    assert parsed(b"PROXY UNKNOWN\r\n" + PDU) == (Source(None), PDU)


def test_it_reads_a_v2_tcp4_header_with_tlvs_and_not_a_byte_more():
    tlv = b"\x05\x00\x04abcd"  # PP2_TYPE_UNIQUE_ID: ignored
    header = v2(0x21, 0x11, tcp4("192.0.2.7", "10.1.0.11", 51234, 11112) + tlv)
    assert parsed(header + PDU) == (Source("192.0.2.7", 51234), PDU)


def test_it_reads_a_v2_tcp6_header():
    payload = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "::1")
    header = v2(0x21, 0x21, payload + struct.pack(">HH", 40000, 11112))
    assert parsed(header + PDU)[0] == Source("2001:db8::7", 40000)


def test_a_v2_local_header_from_a_health_check_names_no_client():
    assert parsed(v2(0x20, 0x00, b"") + PDU) == (Source(None), PDU)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(PDU + b"\x00" * 20, id="a DICOM PDU, no header"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="HTTP"),
        pytest.param(b"PROXY TCP4 192.0.2.7 10.1.0.11 51234\r\n", id="v1 missing a field"),
        pytest.param(b"PROXY TCP4 2001:db8::7 10.1.0.11 1 2\r\n", id="v1 address of the wrong family"),
        pytest.param(b"PROXY TCP4 192.0.2.300 10.1.0.11 1 2\r\n", id="v1 invalid address"),
        pytest.param(b"PROXY TCP4 192.0.2.7 10.1.0.11 65536 2\r\n", id="v1 port out of range"),
        pytest.param(b"PROXY TCP4 192.0.2.7 10.1.0.11 0080 2\r\n", id="v1 port with a leading zero"),
        pytest.param(b"PROXY UDP4 192.0.2.7 10.1.0.11 1 2\r\n", id="v1 unknown protocol"),
        pytest.param(b"PROXY TCP4 192.0.2.7 10.1.0.11 1 2\n", id="v1 without CR"),
        pytest.param(b"PROXY TCP4 \xff.0.2.7 10.1.0.11 1 2\r\n", id="v1 not ASCII"),
        pytest.param(V2_SIGNATURE[:11] + b"X\x21\x11\x00\x0c" + b"\x00" * 12, id="v2 signature wrong"),
        pytest.param(v2(0x22, 0x11, tcp4("192.0.2.7", "10.1.0.11", 1, 2)), id="v2 unknown command"),
        pytest.param(v2(0x11, 0x11, tcp4("192.0.2.7", "10.1.0.11", 1, 2)), id="v2 version 1 in a v2 header"),
        pytest.param(v2(0x21, 0x11, b"\x00" * 8), id="v2 too short for TCP4"),
        pytest.param(v2(0x21, 0x21, b"\x00" * 12), id="v2 too short for TCP6"),
        pytest.param(v2(0x21, 0x41, b"\x00" * 12), id="v2 unknown family"),
    ],
)
def test_it_refuses_a_malformed_header(data):
    with pytest.raises(HeaderError):
        parsed(data)


def test_it_refuses_a_v1_header_too_long_without_reading_on():
    data = b"PROXY TCP4 " + b"1" * 200 + b"\r\n"
    stream = Stream(data)
    with pytest.raises(HeaderError, match="longer than 107"):
        read(stream.receive)
    assert stream.position == 107


def test_it_refuses_a_v2_header_declaring_too_much_before_reading_it():
    stream = Stream(v2(0x21, 0x11, b"", declared=60000) + b"\x00" * 100)
    with pytest.raises(HeaderError, match="declaring 60000 bytes"):
        read(stream.receive)
    assert stream.position == 16


def test_a_header_cut_short_is_an_end_of_stream():
    with pytest.raises(EOFError):
        parsed(b"PROXY TCP4 192.0.2.7 10.1")
    with pytest.raises(EOFError):
        parsed(v2(0x21, 0x11, tcp4("192.0.2.7", "10.1.0.11", 1, 2))[:20])


def test_only_the_listed_balancers_speak_for_others():
    balancers = Balancers.parse(["10.1.0.5", " 10.2.0.0/24 ", "2001:db8::5"])
    assert balancers.speaks_for("10.1.0.5")
    assert balancers.speaks_for("10.2.0.77")
    assert balancers.speaks_for("::ffff:10.1.0.5")  # a dual-stack listener's view of an IPv4 peer
    assert balancers.speaks_for("2001:db8::5")
    assert not balancers.speaks_for("10.1.0.6")
    assert not balancers.speaks_for("not an address")
    with pytest.raises(ValueError):
        Balancers.parse(["10.1.0.300"])
