"""DICOM TLS, both ways: one profile, contexts built from files, and what a certificate says.

The profile is BCP 195's non-downgrading one (RFC 9325; DICOM PS3.15 B.9, dcmtk's default `+py`): TLS 1.2
or newer, and on TLS 1.2 only forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305). TLS 1.3
offers nothing else. So TLS 1.0/1.1, RC4, CBC-only and anonymous suites never complete a handshake.

Key and certificate files are referenced by path and read here, never stored in the database. A context is
built again when one of its files changes (its modification time or size), so a renewed certificate is
used from the next association on, without a restart; open associations keep the one they started with.
"""

import hashlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

logger = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1"


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be read or does not fit (a key for another certificate)."""


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _load(what: str, load: Callable[[], object]) -> None:
    try:
        load()
    except (OSError, ssl.SSLError) as exc:
        raise TlsFileError(f"{what}: {exc}") from exc


def server_context(*, cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """Our SCP's side. With `ca`, callers may present a certificate, which must chain to it (a caller's
    allow-list entry may then require one); without, none is asked for."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load(f"certificate {cert} with key {key}", lambda: context.load_cert_chain(cert, key))
    if ca:
        _load(f"CA file {ca}", lambda: context.load_verify_locations(cafile=ca))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


@dataclass(frozen=True)
class ClientTls:
    """How we connect to one destination. An empty `ca` trusts the system's CA store."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    verify: bool = True
    check_hostname: bool = False

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.ca, self.cert, self.key) if f)


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """Verification on by default. Against the system's CA store (no `ca`) the host name is always checked:
    any publicly trusted certificate would pass otherwise."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = tls.verify and (tls.check_hostname or not tls.ca)
    if tls.verify:
        context.verify_mode = ssl.CERT_REQUIRED
        if tls.ca:
            _load(f"CA file {tls.ca}", lambda: context.load_verify_locations(cafile=tls.ca))
        else:
            context.load_default_certs()
    else:
        context.verify_mode = ssl.CERT_NONE
    if tls.cert:
        _load(f"certificate {tls.cert} with key {tls.key}", lambda: context.load_cert_chain(tls.cert, tls.key or None))
    return context


def _stamp(paths: tuple[str, ...]) -> tuple:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((path, None, None))
    return tuple(stamps)


class Reloading:
    """A context rebuilt when its files change, or when `reload()` asks (SIGHUP). A rebuild that fails (a
    certificate renewed before its key, say) is logged and the last good context kept until the files
    change again."""

    def __init__(self, build: Callable[[], ssl.SSLContext], files: tuple[str, ...]) -> None:
        self._build = build
        self._files = files
        self._lock = threading.Lock()
        self._stamp = _stamp(files)
        self._context = build()  # fails loudly at start: a bad file is a configuration error
        self._forced = False

    def reload(self) -> None:
        """Ask for a rebuild at the next use (safe in a signal handler: it only sets a flag)."""
        self._forced = True

    def context(self) -> ssl.SSLContext:
        stamp = _stamp(self._files)
        if stamp == self._stamp and not self._forced:
            return self._context
        with self._lock:
            if stamp != self._stamp or self._forced:
                self._forced = False
                self._stamp = stamp
                try:
                    self._context = self._build()
                    logger.info("TLS certificate files read again: new connections use them")
                except TlsFileError as exc:
                    logger.error("TLS files changed but cannot be used (the previous ones stay in use): %s", exc)
            return self._context


_client_contexts: dict[ClientTls, tuple[tuple, ssl.SSLContext]] = {}
_client_lock = threading.Lock()


def client_context_cached(tls: ClientTls) -> ssl.SSLContext:
    """One context per destination's settings, rebuilt when its files change (loading a CA store costs ms)."""
    stamp = _stamp(tls.files())
    with _client_lock:
        cached = _client_contexts.get(tls)
        if cached and cached[0] == stamp:
            return cached[1]
    context = client_context(tls)
    with _client_lock:
        _client_contexts[tls] = (stamp, context)
    return context


# --- What a certificate says -------------------------------------------------------------------------------


def fingerprint(der: bytes) -> str:
    """SHA-256 of the DER certificate, lower-case hex without separators."""
    return hashlib.sha256(der).hexdigest()


def normalise_fingerprint(text: str) -> str:
    return text.replace(":", "").replace(" ", "").strip().lower()


def subject(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def subject_matches(der: bytes, wanted: str) -> bool:
    """`wanted` is the whole subject (RFC 4514, as `openssl x509 -subject -nameopt RFC2253` prints it) or
    its common name alone."""
    name = x509.load_der_x509_certificate(der).subject
    common_names = [a.value for a in name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return wanted.strip() in (name.rfc4514_string(), *common_names)


_ca_files: dict[str, tuple[tuple, list[x509.Certificate]]] = {}


def _ca_certificates(path: str) -> list[x509.Certificate]:
    """The CA certificates of a PEM file, parsed again only when the file changed (the SCP asks at every
    association of a caller bound to a CA)."""
    stamp = _stamp((path,))
    cached = _ca_files.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsFileError(f"CA file {path}: {exc}") from exc
    _ca_files[path] = (stamp, certificates)
    return certificates


def issued_by(der: bytes, ca_path: str) -> bool:
    """The certificate was signed by one of the CA certificates in `ca_path` (a PEM bundle)."""
    cert = x509.load_der_x509_certificate(der)
    for ca in _ca_certificates(ca_path):
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


@dataclass(frozen=True)
class CertificateFacts:
    subject: str
    fingerprint: str
    not_after: datetime


def certificate_file_facts(path: str) -> CertificateFacts:
    """The first certificate of a PEM file (a chain starts with its leaf)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsFileError(f"certificate {path}: {exc}") from exc
    return _facts(cert)


def certificate_facts(der: bytes) -> CertificateFacts:
    return _facts(x509.load_der_x509_certificate(der))


def _facts(cert: x509.Certificate) -> CertificateFacts:
    der = cert.public_bytes(Encoding.DER)
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(), fingerprint=fingerprint(der), not_after=cert.not_valid_after_utc
    )


def peer_certificate(sock) -> bytes | None:
    """The DER certificate the other end presented on a TLS socket; None for a plain one, or none shown."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return sock.getpeercert(binary_form=True)
    except (ValueError, OSError):  # no handshake (yet), or closed
        return None


# --- Why a TLS connection failed ---------------------------------------------------------------------------


def handshake_problem(host: str, port: int, context: ssl.SSLContext, *, timeout: float) -> str | None:
    """Connect and shake hands once; the reason when TLS itself refuses (a certificate that does not verify,
    no common protocol or cipher, a peer that does not speak TLS): a configuration error that no retry
    mends. None when the handshake succeeds, or fails for a network reason (refused, timed out, reset).

    pynetdicom 3.0.4 reports any failure to connect the same way (its event Evt17, the exception only
    logged), so the sender asks this after a TLS association could not be opened."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        with context.wrap_socket(raw, server_hostname=host):  # shakes hands, within the socket's timeout
            return None
    except ssl.SSLCertVerificationError as exc:
        return f"TLS: the destination's certificate does not verify: {exc.verify_message}"
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return None  # closed during the handshake: a busy or restarting peer looks the same
    except ssl.SSLError as exc:
        return f"TLS handshake refused: {exc.reason or exc}"
    except OSError:
        return None
    finally:
        raw.close()
