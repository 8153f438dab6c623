"""The PROXY protocol (versions 1 and 2, as HAProxy's `send-proxy` and `send-proxy-v2` send it): a load
balancer in TCP mode tells the SCP who its client is, in a header before the client's first byte.

Behind a load balancer every connection comes from the balancer's address, so the allow-list could not
tell modalities apart and the received-instance row would record the balancer. With SCP_PROXY_PROTOCOL on,
a connection from one of the balancer's addresses (SCP_PROXY_FROM) must start with a valid header, and the
client address in it replaces the balancer's for admission and custody; a connection from a balancer
without one is dropped. A header is never read from any other address: such a connection is a direct one,
and a header it sends is no A-ASSOCIATE-RQ (the PDU guard aborts it).

The header is read in the association's own thread by the PDU guard (guard.py), within PROXY_TIMEOUT:
the acceptor thread only marks the socket (`Pending`), so a balancer that connects and says nothing holds
no door. Only the plain listener speaks it; the TLS listener takes direct connections.
Specification: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt
"""

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# HAProxy sends the header as soon as it connected: it is there at once or not at all.
PROXY_TIMEOUT = 5.0
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the whole line, CRLF included (the specification's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Addresses and TLVs after the 16-byte v2 header. HAProxy's own TLVs (ALPN, authority, unique id, SSL)
# fit in far less; more than this is refused rather than read.
V2_MAX_PAYLOAD = 2048
_V2_LOCAL, _V2_PROXY = 0x20, 0x21
_V2_TCP4, _V2_TCP6 = 0x11, 0x21
_V2_UNSPEC = 0x00


class HeaderError(Exception):
    """The connection did not start with a valid PROXY header."""


@dataclass(frozen=True)
class Source:
    """The client the balancer speaks for; None in `address` for a header that names none (the
    balancer's own health check: v2 LOCAL, v1 UNKNOWN, or an unspecified or non-IP family)."""

    address: str | None
    port: int = 0


def read(receive: Callable[[int], bytes]) -> Source:
    """Read one header with `receive(n)`, which returns exactly n bytes (or raises EOFError), and never
    past it: what follows is the client's. Raises HeaderError."""
    start = receive(len(V1_PREFIX))
    if start == V1_PREFIX:
        line = bytearray(start)
        while not line.endswith(b"\n"):  # parse_v1 wants CRLF; a bare LF ends a malformed line
            if len(line) >= V1_MAX:
                raise HeaderError(f"a version 1 header longer than {V1_MAX} bytes")
            line += receive(1)
        return parse_v1(bytes(line))
    if start != V2_SIGNATURE[: len(start)]:
        raise HeaderError("no PROXY header")
    header = start + receive(16 - len(start))
    length = struct.unpack(">H", header[14:16])[0]
    if header[:12] == V2_SIGNATURE and length > V2_MAX_PAYLOAD:
        raise HeaderError(f"a version 2 header declaring {length} bytes, over {V2_MAX_PAYLOAD}")
    return parse_v2(header, receive(length) if header[:12] == V2_SIGNATURE else b"")


def parse_v1(line: bytes) -> Source:
    """`PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`, `TCP6` alike, or `PROXY UNKNOWN...\\r\\n`."""
    if len(line) > V1_MAX or not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n"):
        raise HeaderError("a malformed version 1 header")
    try:
        fields = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError as exc:
        raise HeaderError("a version 1 header that is not ASCII") from exc
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return Source(None)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise HeaderError("a malformed version 1 header")
    _, family, source, destination, source_port, destination_port = fields
    version = 4 if family == "TCP4" else 6
    for text in (source, destination):
        try:
            if ipaddress.ip_address(text).version != version:
                raise HeaderError(f"an address of the wrong family in a {family} header")
        except ValueError as exc:
            raise HeaderError("an invalid address in a version 1 header") from exc
    for text in (source_port, destination_port):
        if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
            raise HeaderError("an invalid port in a version 1 header")
    return Source(source, int(source_port))


def parse_v2(header: bytes, payload: bytes) -> Source:
    """The 16-byte binary header and the `length` bytes after it."""
    if len(header) != 16 or header[:12] != V2_SIGNATURE:
        raise HeaderError("a malformed version 2 header")
    command, family, length = header[12], header[13], struct.unpack(">H", header[14:16])[0]
    if length != len(payload):
        raise HeaderError("a version 2 header shorter than it declares")
    if command == _V2_LOCAL:
        return Source(None)
    if command != _V2_PROXY:
        raise HeaderError(f"an unknown version 2 command 0x{command:02X}")
    if family == _V2_TCP4 and length >= 12:
        source, _, port, _ = struct.unpack(">4s4sHH", payload[:12])
        return Source(socket.inet_ntop(socket.AF_INET, source), port)
    if family == _V2_TCP6 and length >= 36:
        source, _, port, _ = struct.unpack(">16s16sHH", payload[:36])
        return Source(socket.inet_ntop(socket.AF_INET6, source), port)
    if family in (_V2_TCP4, _V2_TCP6):
        raise HeaderError("a version 2 header too short for its addresses")
    if family == _V2_UNSPEC or family >> 4 == 0x3 or family & 0x0F == 0x2:
        return Source(None)  # unspecified, UNIX sockets, datagrams: nothing to take an address from
    raise HeaderError(f"an unknown version 2 family 0x{family:02X}")


@dataclass(frozen=True)
class Balancers:
    """The addresses (or networks) whose connections carry a PROXY header: SCP_PROXY_FROM."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "Balancers":
        """Raises ValueError for an entry that is not an address or a network."""
        return cls(tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()))

    def speaks_for(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


class Pending(socket.socket):
    """An accepted connection that must start with a PROXY header (the acceptor thread decided: it came
    from a balancer); the PDU guard reads the header before anything else."""

    @classmethod
    def take(cls, client: socket.socket) -> "Pending":
        pending = cls(client.family, client.type, client.proto, fileno=client.detach())
        pending.header_read = False
        return pending
