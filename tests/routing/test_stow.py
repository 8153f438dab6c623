"""The STOW-RS sender: what each instance became, read from the answer's body whatever its status; and a small
HTTP server that answers 202 with a FailedSOPSequence, 409 with a body, 429 with Retry-After, or drops the
connection, with the delivery's ledger recording exactly what the body said."""

import json
import threading
from datetime import timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydicom import dcmread

from apps.core import clock
from apps.routing import dicom_send, stow
from apps.routing.models import Delivery, DeliveryItem, Destination
from apps.routing.services import delivery_send

from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps


def answer(stored=(), failed=()) -> bytes:
    """A STOW-RS response body (application/dicom+json): stored UIDs, and (uid, FailureReason) pairs."""

    def item(uid, reason=None):
        entry = {
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        if reason is not None:
            entry["00081197"] = {"vr": "US", "Value": [reason]}
        return entry

    body = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [item(u) for u in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [item(u, r) for u, r in failed]}
    return json.dumps(body).encode()


def kinds(results) -> list[str]:
    return [r.kind for r in results]


def test_a_200_is_read_instance_by_instance_not_taken_as_success():
    results = stow.outcomes(200, {}, answer(stored=["1"], failed=[("2", 0xC000)]), ["1", "2", "3"])
    assert kinds(results) == [dicom_send.DELIVERED, dicom_send.PERMANENT, dicom_send.TRANSIENT]
    assert "0xC000" in results[1].error and "not in the answer" in results[2].error


def test_a_202_with_failures_classifies_each_reason_like_a_c_store_status():
    body = answer(stored=["1"], failed=[("2", 0xA700), ("3", 0x0122), ("4", 0x0110)])
    results = stow.outcomes(202, {}, body, ["1", "2", "3", "4"])
    assert kinds(results) == [dicom_send.DELIVERED, dicom_send.TRANSIENT, dicom_send.PERMANENT, dicom_send.PERMANENT]


def test_a_409_is_read_too_and_an_empty_409_sends_nothing_as_delivered():
    assert kinds(stow.outcomes(409, {}, answer(failed=[("1", 0xA900)]), ["1"])) == [dicom_send.PERMANENT]
    assert kinds(stow.outcomes(409, {}, b"", ["1", "2"])) == [dicom_send.TRANSIENT] * 2


def test_busy_and_broken_servers_are_transient_and_retry_after_is_honoured():
    [busy] = stow.outcomes(429, {"Retry-After": "120"}, b"", ["1"])
    assert busy.kind == dicom_send.TRANSIENT and busy.retry_after == 120
    later = format_datetime(clock.now() + timedelta(seconds=300), usegmt=True)
    assert 290 <= stow.outcomes(429, {"Retry-After": later}, b"", ["1"])[0].retry_after <= 300
    assert kinds(stow.outcomes(503, {}, b"", ["1"])) == [dicom_send.TRANSIENT]
    assert kinds(stow.outcomes(408, {}, b"", ["1"])) == [dicom_send.TRANSIENT]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_credentials_or_a_wrong_url_are_a_configuration_error_that_keeps_the_items(status):
    [result] = stow.outcomes(status, {}, b"nope", ["1"])
    # Transient for the items (they wait, pending, for Resume), a configuration error for the destination.
    assert result.kind == dicom_send.TRANSIENT and result.config_error and f"HTTP {status}" in result.error


@pytest.mark.parametrize("status", [400, 413, 415])
def test_a_refused_request_is_permanent_with_its_reason(status):
    [result] = stow.outcomes(status, {}, b"too big", ["1"])
    assert result.kind == dicom_send.PERMANENT and not result.config_error and "too big" in result.error


def test_batches_respect_count_and_bytes_and_a_big_file_goes_alone(tmp_path):
    files = []
    for n, size in enumerate([10, 10, 10, 50, 10]):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(b"x" * size)
        files.append(dicom_send.File("1.2", "1.2.840.10008.1.2.1", path))
    assert stow.batches(files, count=2, size=100) == [[0, 1], [2, 3], [4]]
    assert stow.batches(files, count=10, size=30) == [[0, 1, 2], [3], [4]]


# --- against a real HTTP server ------------------------------------------------------------------------------


class Scripted(BaseHTTPRequestHandler):
    """Answers each STOW-RS request with the next scripted answer; records what it received."""

    script: list = []
    received: list = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        uids = [dcmread_part(part) for part in parts(body, self.headers["Content-Type"])]
        Scripted.received.append(uids)
        status, headers, content = Scripted.script.pop(0)(uids)
        if status is None:  # drop the connection without an answer
            self.connection.close()
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args) -> None:
        pass


def parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = content_type.split("boundary=")[1].encode()
    chunks = body.split(b"--" + boundary)[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")] for chunk in chunks]


def dcmread_part(part: bytes) -> str:
    import io

    return str(dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def server():
    Scripted.script, Scripted.received = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    thread.join(10)


@pytest.fixture
def web_delivery(server, storage, tmp_path, db, default_mapping):
    """A study of 4 instances routed to a DICOMweb destination served by the scripted server."""
    from apps.configuration.services import config_import

    config_import(
        f"""
destinations:
  - name: cloud
    protocol: dicomweb
    dicomweb: {{url: "http://127.0.0.1:{server.server_address[1]}/dicom-web", batch_count: 2, timeout: 10}}
rules:
  - {{name: all, priority: 1, match: {{modality: CT}}, destinations: [cloud]}}
"""
    )
    _, paths = synthetic_study(tmp_path / "in", count=4)
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")
    return delivery_id, [str(dcmread(p).SOPInstanceUID) for p in paths]


def ledger(delivery_id: int) -> dict[str, str]:
    items = DeliveryItem.objects.filter(delivery_id=delivery_id).select_related("instance")
    return {i.instance.sop_instance_uid: i.state for i in items}


def test_the_ledger_records_exactly_what_each_body_said_and_only_what_is_missing_goes_again(web_delivery):
    delivery_id, uids = web_delivery
    Scripted.script = [
        lambda sent: (202, {}, answer(stored=[sent[0]], failed=[(sent[1], 0xA700)])),  # one stored, one transient
        lambda sent: (409, {}, answer(failed=[(sent[0], 0xC000)])),  # one permanent, one not in the answer
    ]
    assert delivery_send(delivery_id=delivery_id) == "pending"
    batch_one, batch_two = Scripted.received
    state = ledger(delivery_id)
    assert state[batch_one[0]] == "delivered" and state[batch_one[1]] == "pending"
    assert state[batch_two[0]] == "failed" and state[batch_two[1]] == "pending"
    assert Destination.objects.get(name="cloud").health == "up"  # it answered

    Scripted.script = [lambda sent: (200, {}, answer(stored=sent))]
    Delivery.objects.filter(pk=delivery_id).update(next_attempt_at=clock.now())
    assert delivery_send(delivery_id=delivery_id) == "failed"  # the 0xC000 instance can never go
    assert sorted(Scripted.received[2]) == sorted([batch_one[1], batch_two[1]])  # only what was missing
    assert sorted(ledger(delivery_id).values()) == ["delivered", "delivered", "delivered", "failed"]


def test_a_429_waits_as_long_as_retry_after_says(web_delivery):
    delivery_id, _ = web_delivery
    Scripted.script = [lambda sent: (429, {"Retry-After": "600"}, b"")] * 2
    before = clock.now()
    assert delivery_send(delivery_id=delivery_id) == "pending"
    delivery = Delivery.objects.get(pk=delivery_id)
    assert delivery.next_attempt_at >= before + timedelta(seconds=600)
    assert set(ledger(delivery_id).values()) == {"pending"}


def test_a_connection_dropped_before_the_answer_records_nothing_of_that_batch_as_delivered(web_delivery):
    delivery_id, _ = web_delivery
    Scripted.script = [lambda sent: (None, {}, b""), lambda sent: (200, {}, answer(stored=sent))]
    assert delivery_send(delivery_id=delivery_id) == "pending"
    dropped, answered = Scripted.received
    state = ledger(delivery_id)
    assert [state[uid] for uid in dropped] == ["pending", "pending"]  # sent, but no answer: not delivered
    assert [state[uid] for uid in answered] == ["delivered", "delivered"]


def test_a_dicomweb_destination_is_probed_by_qido_and_bad_credentials_pause_it(server, db, monkeypatch):
    from apps.routing.health import echo

    destination = Destination.objects.create(
        name="cloud",
        protocol="dicomweb",
        ae_title="DICOMWEB",
        host="127.0.0.1",
        port=server.server_address[1],
        dicomweb_url=f"http://127.0.0.1:{server.server_address[1]}/dicom-web",
        dicomweb_auth="bearer",
        dicomweb_credentials="env:ROUTER_TEST_NO_SUCH_TOKEN",
    )
    result = echo(destination)
    assert result.config_error and "cannot be read" in result.error
    monkeypatch.setenv("ROUTER_TEST_NO_SUCH_TOKEN", "abc")
    assert echo(destination).kind != dicom_send.DELIVERED  # the scripted server has no QIDO: 501, down


def test_a_401_pauses_the_destination_and_resume_sends_what_waited(web_delivery):
    from apps.routing.services import destination_resume

    delivery_id, _ = web_delivery
    Scripted.script = [lambda sent: (401, {}, b"bad token")]
    assert delivery_send(delivery_id=delivery_id) == "pending"
    destination = Destination.objects.get(name="cloud")
    assert "HTTP 401" in destination.config_error
    assert set(ledger(delivery_id).values()) == {"pending"} and Delivery.objects.get(pk=delivery_id).attempts == 0

    Scripted.script = [lambda sent: (200, {}, answer(stored=sent))] * 2
    assert destination_resume(destination_id=destination.pk)
    assert delivery_send(delivery_id=delivery_id) == "delivered"


def test_an_unreadable_file_is_that_files_failure_not_the_batchs(server, tmp_path, storage, db):
    good = synthetic_study(tmp_path / "in", count=1)[1][0]
    missing = tmp_path / "gone.dcm"
    Scripted.script = [lambda sent: (200, {}, answer(stored=sent))]
    target = stow.WebTarget(url=f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
    files = [
        dicom_send.File("1.2", "1.2.840.10008.1.2.1", missing),
        dicom_send.File("1.2", "1.2.840.10008.1.2.1", good),
    ]
    lost, sent = stow.send(target, files)
    assert lost.kind == dicom_send.TRANSIENT and "FileNotFoundError" in lost.error
    assert sent.kind == dicom_send.DELIVERED
