"""apps.core.tls: the profile, contexts from files that change, certificate facts, and telling a TLS refusal
from a network failure. A real handshake over loopback where it matters; no services."""

import os
import shutil
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta

import pytest

from apps.core import tls

from ..support.certs import Authority


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder / "ca", "Hospital CA")
    return {
        "ca": ca,
        "server": ca.issue("pacs", server=True),
        "renewed": ca.issue("pacs-renewed", server=True),
        "expired": ca.issue("pacs-expired", server=True, days=-1, not_before_days=30),
        "soon": ca.issue("soon", server=True, days=5),
        "client": ca.issue("router-client"),
    }


class OneServer:
    """A TLS (or plain) server on loopback that shakes hands with each connection, then closes it."""

    def __init__(self, context: ssl.SSLContext | None, greeting: bytes = b"") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.greeting = greeting
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            raw, _ = self.listener.accept()
        except OSError:
            return
        with raw:
            try:
                if self.context is None:
                    raw.sendall(self.greeting)
                    raw.recv(1024)
                else:
                    with self.context.wrap_socket(raw, server_side=True):
                        pass
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def test_the_server_profile_refuses_tls_1_1_and_offers_only_aead_suites(pki):
    context = tls.server_context(cert=str(pki["server"].cert), key=str(pki["server"].key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)


def test_a_key_that_does_not_fit_its_certificate_is_a_clear_error(pki):
    with pytest.raises(tls.TlsFileError, match="certificate .* with key"):
        tls.server_context(cert=str(pki["server"].cert), key=str(pki["client"].key))


def test_a_context_is_built_again_when_its_files_change_and_kept_when_the_new_ones_are_bad(pki, tmp_path):
    cert, key = tmp_path / "scp.crt", tmp_path / "scp.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    reloading = tls.Reloading(lambda: tls.server_context(cert=str(cert), key=str(key)), files=(str(cert), str(key)))
    first = reloading.context()
    assert reloading.context() is first  # nothing changed: no rebuild

    shutil.copy(pki["renewed"].cert, cert)  # the certificate renewed, its key not yet
    assert reloading.context() is first  # a mismatch keeps the last good one
    shutil.copy(pki["renewed"].key, key)
    renewed = reloading.context()
    assert renewed is not first

    reloading.reload()  # SIGHUP: rebuilt even though nothing changed
    assert reloading.context() is not renewed


def test_a_destination_with_an_expired_certificate_is_a_configuration_error(pki):
    server = OneServer(tls.server_context(cert=str(pki["expired"].cert), key=str(pki["expired"].key)))
    client = tls.client_context(tls.ClientTls(ca=pki["ca"].ca_file))
    try:
        problem = tls.handshake_problem("127.0.0.1", server.port, client, timeout=5)
    finally:
        server.close()
    assert problem == "TLS: the destination's certificate does not verify: certificate has expired"


def test_a_destination_that_does_not_speak_tls_is_a_configuration_error(pki):
    server = OneServer(None, greeting=b"\x02\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # a DICOM PDU, not TLS
    client = tls.client_context(tls.ClientTls(ca=pki["ca"].ca_file))
    try:
        problem = tls.handshake_problem("127.0.0.1", server.port, client, timeout=5)
    finally:
        server.close()
    assert problem and problem.startswith("TLS handshake refused")


def test_a_destination_that_is_down_or_fine_is_no_configuration_error(pki):
    client = tls.client_context(tls.ClientTls(ca=pki["ca"].ca_file))
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    assert tls.handshake_problem("127.0.0.1", closed_port, client, timeout=2) is None
    server = OneServer(tls.server_context(cert=str(pki["server"].cert), key=str(pki["server"].key)))
    try:
        assert tls.handshake_problem("127.0.0.1", server.port, client, timeout=5) is None
    finally:
        server.close()


def test_verification_can_be_turned_off_for_a_destination_but_is_on_by_default(pki):
    assert tls.client_context(tls.ClientTls()).verify_mode == ssl.CERT_REQUIRED
    lax = tls.client_context(tls.ClientTls(verify=False))
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname
    strict = tls.client_context(tls.ClientTls(ca=pki["ca"].ca_file, check_hostname=True))
    assert strict.check_hostname


def test_a_cached_client_context_is_rebuilt_when_its_ca_file_changes(pki, tmp_path):
    ca = tmp_path / "ca.pem"
    shutil.copy(pki["ca"].ca_file, ca)
    settings = tls.ClientTls(ca=str(ca))
    first = tls.client_context_cached(settings)
    assert tls.client_context_cached(settings) is first
    os.utime(ca, ns=(0, 0))
    assert tls.client_context_cached(settings) is not first


def test_certificate_facts_say_who_and_until_when(pki):
    facts = tls.certificate_file_facts(str(pki["soon"].cert))
    assert facts.subject == "CN=soon,O=Router tests"
    assert facts.fingerprint == tls.fingerprint(pki["soon"].der)
    assert datetime.now(UTC) + timedelta(days=4) < facts.not_after < datetime.now(UTC) + timedelta(days=6)
    assert tls.issued_by(pki["soon"].der, pki["ca"].ca_file)
    with pytest.raises(tls.TlsFileError):
        tls.certificate_file_facts(str(pki["soon"].key))


def test_a_plain_socket_has_no_peer_certificate():
    with socket.socket() as plain:
        assert tls.peer_certificate(plain) is None
    assert tls.peer_certificate(None) is None


def test_a_ca_file_is_parsed_once_until_it_changes(pki, tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    shutil.copy(pki["ca"].ca_file, ca)
    parsed = []
    real = tls.x509.load_pem_x509_certificates
    monkeypatch.setattr(tls.x509, "load_pem_x509_certificates", lambda data: parsed.append(1) or real(data))
    for _ in range(3):
        assert tls.issued_by(pki["client"].der, str(ca))
    assert len(parsed) == 1
    os.utime(ca, ns=(0, 0))
    assert tls.issued_by(pki["client"].der, str(ca)) and len(parsed) == 2
