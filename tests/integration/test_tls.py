"""DICOM TLS against real peers: dcmtk's storescu/storescp with +tls and Orthanc with DicomTlsEnabled, both
ways; and each refusal (a plain client on the TLS port, TLS 1.1, a certificate from another CA, a listed
caller that must use TLS on the plain port, a destination's expired certificate) clean: nothing stored, no
thread or descriptor left behind."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from apps.configuration.services import config_import
from apps.core import tls
from apps.notifications.models import Notification
from apps.routing.models import Delivery, Destination
from apps.routing.services import delivery_send, destination_resume
from apps.studies.models import ReceivedInstance

from ..conftest import require_tool
from ..support import procfile
from ..support.certs import Authority
from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import storescu, synthetic_study
from ..support.orthanc import Orthanc
from ..support.pipeline import receive_study, run_steps
from ..support.processes import Process, connections_held, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder / "hospital", "Hospital CA")
    other = Authority(folder / "other", "Other CA")
    return {
        "ca": ca,
        "router": ca.issue("router", server=True),
        "router-renewed": ca.issue("router-renewed", server=True),
        "router-client": ca.issue("router-client"),
        "ct1": ca.issue("ct1"),
        "pacs": ca.issue("pacs", server=True),
        "pacs-expired": ca.issue("pacs-expired", server=True, days=-1, not_before_days=30),
        "intruder": other.issue("ct1"),  # the right name, from another CA
    }


@pytest.fixture
def tls_env(service_env, pki, tmp_path) -> dict:
    """The SCP's TLS files, copied where a test may replace them."""
    folder = tmp_path / "scp-tls"
    folder.mkdir()
    shutil.copy(pki["router"].cert, folder / "scp.crt")
    shutil.copy(pki["router"].key, folder / "scp.key")
    return {
        **service_env,
        "SCP_TLS_CERT": str(folder / "scp.crt"),
        "SCP_TLS_KEY": str(folder / "scp.key"),
        "SCP_TLS_CA": pki["ca"].ca_file,
    }


def storescu_tls(port: int, files: list[Path], *, cert, ca: str, calling: str = "CT1") -> subprocess.CompletedProcess:
    args = [require_tool("storescu"), "+tls", str(cert.key), str(cert.cert), "+cf", ca, "-aet", calling]
    return subprocess.run(
        [*args, "-aec", "ROUTER", "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def storescp_tls(log_dir):
    """dcmtk's storescp +tls as a destination: start(folder, cert, ca) -> (process, port); stopped after."""
    started: list[Process] = []

    def start(folder: Path, cert, ca: str) -> tuple[Process, int]:
        port = free_port()
        folder.mkdir(exist_ok=True)
        args = [require_tool("storescp"), "+tls", str(cert.key), str(cert.cert), "+cf", ca, "-aet", "PACS"]
        proc = Process("storescp-tls", [*args, "-od", str(folder), str(port)], env=dict(os.environ), log_dir=log_dir)
        started.append(proc)
        proc.wait_for_port(port)
        return proc, port

    yield start
    for proc in started:
        proc.stop()


def tls_hello(port: int, ca: str, **context_options) -> bytes:
    """Shake hands with the SCP's TLS port; the certificate it presented (DER)."""
    context = ssl.create_default_context(cafile=ca)
    for name, value in context_options.items():
        setattr(context, name, value)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        return conn.getpeercert(binary_form=True)


def peers_gone(pid: int, port: int, threads_before: int) -> bool:
    """Every connection to `port` closed by the SCP, and its association threads ended."""
    return connections_held(pid, port) == 0 and len(os.listdir(f"/proc/{pid}/task")) <= threads_before


def stored_nothing(storage: Path) -> bool:
    return not ReceivedInstance.objects.exists() and not any((storage / "instances").glob("**/*.dcm"))


def test_a_study_travels_modality_tls_router_tls_pacs_with_dcmtk(
    start_scp, start_worker, storescp_tls, tls_env, pki, tmp_path, default_mapping
):
    ca = pki["ca"].ca_file
    pacs, pacs_port = storescp_tls(tmp_path / "pacs", pki["pacs"], ca)
    client = pki["router-client"]
    config_import(
        f"""
callers:
  - {{ae_title: CT1, tls: {{ca: {ca}, subject: ct1}}}}
destinations:
  - name: pacs
    ae_title: PACS
    host: 127.0.0.1
    port: {pacs_port}
    tls: {{ca: {ca}, cert: {client.cert}, key: {client.key}}}
rules:
  - {{name: CT to PACS, priority: 10, match: {{modality: CT}}, destinations: [pacs]}}
"""
        + ACHEN_ON_SHIFT
    )
    tls_port = free_port()
    start_scp(tls_env, port=0, tls_port=tls_port)
    start_worker()
    _, paths = synthetic_study(tmp_path / "modality", count=4)

    sent = storescu_tls(tls_port, paths, cert=pki["ct1"], ca=ca)

    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: Delivery.objects.filter(state=Delivery.State.DELIVERED).exists(),
        timeout=60,
        what="the delivery over TLS",
    )
    assert len(list((tmp_path / "pacs").iterdir())) == 4
    assert pacs.alive()
    destination = Destination.objects.get(name="pacs")
    assert destination.tls_peer_fingerprint == tls.fingerprint(pki["pacs"].der)  # what it presented, remembered


@pytest.fixture
def orthanc_tls(pki, tmp_path, log_dir):
    router_port = free_port()
    server = Orthanc(
        tmp_path / "orthanc",
        log_dir=log_dir,
        extra={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki["pacs"].cert),
            "DicomTlsPrivateKey": str(pki["pacs"].key),
            "DicomTlsTrustedCertificates": pki["ca"].ca_file,
            "DicomTlsRemoteCertificateRequired": True,
            "DicomModalities": {
                "router": {"AET": "ROUTER", "Host": "127.0.0.1", "Port": router_port, "UseDicomTls": True}
            },
        },
    )
    server.router_port = router_port
    yield server
    server.stop()


def test_orthanc_over_tls_both_ways(start_scp, tls_env, pki, tmp_path, orthanc_tls, storage, default_mapping):
    ca, client = pki["ca"].ca_file, pki["router-client"]
    config_import(
        f"""
callers:
  - {{ae_title: {orthanc_tls.ae_title}, tls: {{ca: {ca}, subject: pacs}}}}
destinations:
  - name: orthanc
    ae_title: {orthanc_tls.ae_title}
    host: 127.0.0.1
    port: {orthanc_tls.dicom_port}
    tls: {{ca: {ca}, cert: {client.cert}, key: {client.key}}}
rules:
  - {{name: CT to Orthanc, priority: 10, match: {{modality: CT}}, destinations: [orthanc]}}
"""
        + ACHEN_ON_SHIFT
    )
    # Router -> Orthanc: a delivery over TLS, our client certificate required by Orthanc.
    _, paths = synthetic_study(tmp_path / "modality", count=3)
    [delivery_id] = run_steps(receive_study(storage, paths))
    assert delivery_send(delivery_id=delivery_id) == "delivered"
    assert orthanc_tls.instance_count() == 3

    # Orthanc -> router: Orthanc's C-STORE SCU over TLS to our TLS port, with its certificate.
    _, others = synthetic_study(tmp_path / "at-orthanc", count=2)
    ids = [orthanc_tls.post("/instances", path.read_bytes())["ID"] for path in others]
    start_scp(tls_env, port=0, tls_port=orthanc_tls.router_port)
    orthanc_tls.post("/modalities/router/store", ids)  # synchronous: returns once sent
    wanted = {dcmread(path).SOPInstanceUID for path in others}
    wait_until(
        lambda: set(ReceivedInstance.objects.values_list("sop_instance_uid", flat=True)) >= wanted,
        timeout=30,
        what="Orthanc's instances over TLS",
    )


def test_a_plain_client_on_the_tls_port_is_refused_cleanly(start_scp, tls_env, pki, tmp_path, storage):
    tls_port = free_port()
    scp, _ = start_scp(tls_env, port=0, tls_port=tls_port)
    tls_hello(tls_port, pki["ca"].ca_file)  # warm: the first association's threads and imports
    threads = len(os.listdir(f"/proc/{scp.pid}/task"))
    _, paths = synthetic_study(tmp_path / "modality", count=1)

    plain = subprocess.run(
        [require_tool("storescu"), "-aet", "CT1", "-aec", "ROUTER", "127.0.0.1", str(tls_port), str(paths[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert plain.returncode != 0
    assert stored_nothing(storage)
    wait_until(lambda: peers_gone(scp.pid, tls_port, threads), timeout=10, what="connections closed, threads back")
    assert "TLS connection from" in scp.log()
    assert storescu_tls(tls_port, paths, cert=pki["ct1"], ca=pki["ca"].ca_file).returncode == 0  # still serving


def test_a_tls_1_1_client_is_refused(start_scp, tls_env, pki, storage):
    tls_port = free_port()
    scp, _ = start_scp(tls_env, port=0, tls_port=tls_port)
    tls_hello(tls_port, pki["ca"].ca_file)
    threads = len(os.listdir(f"/proc/{scp.pid}/task"))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 offer TLS 1.1 at all
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1

    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
        old.wrap_socket(raw, server_hostname="127.0.0.1")

    assert stored_nothing(storage)
    wait_until(lambda: peers_gone(scp.pid, tls_port, threads), timeout=10, what="connections closed, threads back")
    # The profile itself: TLS 1.2 or 1.3, an AEAD suite.
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
        context = ssl.create_default_context(cafile=pki["ca"].ca_file)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            name, version, _ = conn.cipher()
            assert version in ("TLSv1.2", "TLSv1.3") and ("GCM" in name or "CHACHA20" in name)


def test_a_client_certificate_from_another_ca_is_refused(start_scp, tls_env, pki, tmp_path, storage):
    config_import(f"callers:\n  - {{ae_title: CT1, tls: {{ca: {pki['ca'].ca_file}}}}}\n")
    tls_port = free_port()
    scp, _ = start_scp(tls_env, port=0, tls_port=tls_port)
    tls_hello(tls_port, pki["ca"].ca_file)
    threads = len(os.listdir(f"/proc/{scp.pid}/task"))
    _, paths = synthetic_study(tmp_path / "modality", count=1)

    forged = storescu_tls(tls_port, paths, cert=pki["intruder"], ca=pki["ca"].ca_file)

    assert forged.returncode != 0
    assert stored_nothing(storage)
    wait_until(lambda: peers_gone(scp.pid, tls_port, threads), timeout=10, what="connections closed, threads back")


def test_a_caller_that_must_use_tls_is_rejected_on_the_plain_port_as_unknown(start_scp, tls_env, pki, storage):
    config_import("callers:\n  - {ae_title: CT1, tls: {required: true}}\n")
    tls_port = free_port()
    _, plain_port = start_scp(tls_env, tls_port=tls_port)
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)

    assoc = ae.associate("127.0.0.1", plain_port, ae_title="ROUTER")

    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)
    context = ssl.create_default_context(cafile=pki["ca"].ca_file)
    context.check_hostname = False
    secure = ae.associate("127.0.0.1", tls_port, ae_title="ROUTER", tls_args=(context, None))
    assert secure.is_established  # the same caller over TLS is admitted
    secure.release()
    assert stored_nothing(storage)


def test_a_destination_with_an_expired_certificate_is_paused_and_staff_are_told(
    storescp_tls, pki, tmp_path, storage, default_mapping, django_user_model
):
    django_user_model.objects.create(username="ops", is_staff=True, email="ops@example.org")
    ca = pki["ca"].ca_file
    expired, expired_port = storescp_tls(tmp_path / "expired", pki["pacs-expired"], ca)
    client = pki["router-client"]
    config_import(
        f"""
destinations:
  - name: pacs
    ae_title: PACS
    host: 127.0.0.1
    port: {expired_port}
    tls: {{ca: {ca}, cert: {client.cert}, key: {client.key}}}
rules:
  - {{name: CT to PACS, priority: 10, match: {{modality: CT}}, destinations: [pacs]}}
"""
    )
    _, paths = synthetic_study(tmp_path / "modality", count=2)
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")

    assert delivery_send(delivery_id=delivery_id) == "pending"

    destination = Destination.objects.get(name="pacs")
    assert "certificate has expired" in destination.config_error
    delivery = Delivery.objects.get(pk=delivery_id)
    assert delivery.attempts == 0  # no retry budget spent on what no retry mends
    assert list(Notification.objects.filter(event="destination_paused").values_list("recipient__username", flat=True))
    assert delivery_send(delivery_id=delivery_id) is None  # paused: not even tried
    assert not list((tmp_path / "expired").iterdir())

    # The operator renews the destination's certificate and resumes: everything goes, once.
    expired.stop()
    _, good_port = storescp_tls(tmp_path / "renewed", pki["pacs"], ca)
    Destination.objects.filter(pk=destination.pk).update(port=good_port)
    assert destination_resume(destination_id=destination.pk)
    assert delivery_send(delivery_id=delivery_id) == "delivered"
    assert len(list((tmp_path / "renewed").iterdir())) == 2


def test_a_renewed_certificate_is_used_without_a_restart_and_sighup_keeps_serving(start_scp, tls_env, pki):
    tls_port = free_port()
    scp, _ = start_scp(tls_env, port=0, tls_port=tls_port)
    ca = pki["ca"].ca_file
    assert tls_hello(tls_port, ca) == pki["router"].der
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    open_before = ae.associate("127.0.0.1", tls_port, ae_title="ROUTER", tls_args=(context, None))
    assert open_before.is_established

    renewed = pki["router-renewed"]
    for source, name in ((renewed.key, "SCP_TLS_KEY"), (renewed.cert, "SCP_TLS_CERT")):
        staged = Path(tls_env[name] + ".new")
        shutil.copy(source, staged)
        os.replace(staged, tls_env[name])  # as certbot and friends do: a rename, never a half-written file

    assert tls_hello(tls_port, ca) == renewed.der  # the next connection, no restart
    assert open_before.send_c_echo().Status == 0x0000  # the open association goes on with its session
    open_before.release()
    os.kill(scp.pid, signal.SIGHUP)
    assert tls_hello(tls_port, ca) == renewed.der
    assert scp.alive()


def test_scp_processes_serve_both_ports_and_take_a_renewed_certificate_on_sighup(tls_env, pki, tmp_path, log_dir):
    port, tls_port = free_port(), free_port()
    command = procfile.command(
        "scp", "--host", "127.0.0.1", "--port", str(port), "--tls-port", str(tls_port), "--processes", "2"
    )
    supervisor = Process("scp-processes", command, env=tls_env, log_dir=log_dir)
    try:
        supervisor.wait_for_port(port)
        supervisor.wait_for_port(tls_port)
        wait_until(lambda: supervisor.log().count("(process ") >= 2, timeout=30, what="two SCP processes serving")
        _, plain_paths = synthetic_study(tmp_path / "plain", count=2)
        _, tls_paths = synthetic_study(tmp_path / "tls", count=2)
        assert storescu(port, plain_paths).returncode == 0
        assert storescu_tls(tls_port, tls_paths, cert=pki["ct1"], ca=pki["ca"].ca_file).returncode == 0
        assert ReceivedInstance.objects.count() == 4

        renewed = pki["router-renewed"]
        shutil.copy(renewed.key, tls_env["SCP_TLS_KEY"])
        shutil.copy(renewed.cert, tls_env["SCP_TLS_CERT"])
        os.kill(supervisor.pid, signal.SIGHUP)  # passed on to each process
        for _ in range(4):  # whichever process takes the connection
            assert tls_hello(tls_port, pki["ca"].ca_file) == renewed.der
        assert supervisor.alive() and "stopped with exit code" not in supervisor.log()
    finally:
        assert supervisor.stop() == 0


def test_a_silent_peer_on_the_tls_port_holds_only_its_own_place_and_is_dropped_at_the_acse_timeout(
    start_scp, tls_env, pki
):
    tls_port = free_port()
    scp, _ = start_scp({**tls_env, "SCP_ACSE_TIMEOUT": "2"}, port=0, tls_port=tls_port)
    tls_hello(tls_port, pki["ca"].ca_file)
    threads = len(os.listdir(f"/proc/{scp.pid}/task"))
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as silent:
        assert tls_hello(tls_port, pki["ca"].ca_file) == pki["router"].der  # others are served meanwhile
        silent.settimeout(10)
        assert silent.recv(1) == b""  # closed by the SCP after the ACSE timeout, no handshake
    wait_until(lambda: peers_gone(scp.pid, tls_port, threads), timeout=10, what="connections closed, threads back")
