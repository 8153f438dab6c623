"""runscp as a real process, with dcmtk's echoscu and storescu and a pynetdicom SCU as peers."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from apps.ingest.models import AllowedCaller
from apps.studies.models import ReceivedInstance

from ..conftest import require_tool
from ..support.dicom import SHIPPED, dataset_bytes, shipped, storescu, synthetic_study
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def stored_files(storage):
    return sorted((storage / "instances").rglob("*.dcm")) if (storage / "instances").exists() else []


def test_echoscu_gets_an_answer(start_scp):
    _, port = start_scp()
    result = subprocess.run(
        [require_tool("echoscu"), "-aec", "ROUTER", "127.0.0.1", str(port)], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", list(SHIPPED))
def test_storescu_files_are_stored_byte_for_byte(start_scp, storescp, storage, name):
    """What storescu sends is what we store. storescu re-encodes some files on the way (it drops
    CT_small's trailing padding, for one), so the reference is dcmtk's storescp receiving the same send.
    One SCP per file: several of pydicom's files are one image in several encodings under one SOP
    Instance UID, and the router keeps the first copy of a UID."""
    _, port = start_scp()
    _, reference_port, reference = storescp()
    path = shipped(name)
    for target in (port, reference_port):
        result = storescu(target, [path])
        assert result.returncode == 0, result.stdout + result.stderr
    header = dcmread(path, stop_before_pixels=True)
    row = ReceivedInstance.objects.get(sop_instance_uid=header.SOPInstanceUID)
    stored = storage / row.path
    [received] = list(reference.iterdir())
    assert dataset_bytes(stored) == dataset_bytes(received)
    assert row.transfer_syntax_uid == header.file_meta.TransferSyntaxUID
    assert stored.read_bytes()[:128] == b"\0" * 128  # our preamble, never the sender's
    assert list((storage / "tmp").iterdir()) == []


def test_the_same_instance_sent_twice_is_kept_once(start_scp, storage):
    _, port = start_scp()
    files = [shipped("ct"), shipped("mr"), shipped("jpeg")]
    assert storescu(port, files).returncode == 0
    again = storescu(port, files)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ReceivedInstance.objects.count() == 3
    assert len(stored_files(storage)) == 3


def raw_send(port, path, *, sop_class=CTImageStorage):
    """Send the bytes of `path` after its file meta exactly as they are (pynetdicom's chunked mode)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(sop_class, dcmread(path, stop_before_pixels=True, force=True).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status), str(status.get("ErrorComment", ""))


def with_body(tmp_path, name, body: bytes):
    """A file whose meta is CT_small's and whose dataset is `body`."""
    original = shipped("ct").read_bytes()
    meta_end = len(original) - len(dataset_bytes(shipped("ct")))
    path = tmp_path / name
    path.write_bytes(original[:meta_end] + body)
    return path


def test_bad_input_gets_failure_statuses_and_the_scp_serves_the_next_association(start_scp, storage, tmp_path):
    _, port = start_scp()
    good = dataset_bytes(shipped("ct"))
    truncated = with_body(tmp_path, "truncated.dcm", good[: len(good) // 2])
    garbage = with_body(tmp_path, "garbage.dcm", b"GET / HTTP/1.1\r\nHost: router\r\n\r\n" * 20)
    status, comment = raw_send(port, truncated)
    assert status == 0xC000 and "ends inside" in comment
    status, _ = raw_send(port, garbage)
    assert 0xC000 <= status <= 0xCFFF
    assert ReceivedInstance.objects.count() == 0
    assert stored_files(storage) == []
    assert raw_send(port, shipped("ct"))[0] == 0x0000
    assert ReceivedInstance.objects.count() == 1


def test_a_dataset_that_does_not_match_its_command_is_refused(start_scp, tmp_path):
    from pynetdicom.sop_class import MRImageStorage

    _, port = start_scp()
    ds = dcmread(shipped("ct"))
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage  # the command will say MR, the dataset says CT
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert raw_send(port, path, sop_class=MRImageStorage)[0] == 0xA900


def test_the_allow_list_rejects_unknown_callers_and_known_ones_from_another_host(start_scp):
    AllowedCaller.objects.create(ae_title="GOOD", host="127.0.0.1")
    AllowedCaller.objects.create(ae_title="ELSEWHERE", host="10.20.30.40")
    _, port = start_scp()

    def associate(title):
        ae = AE(ae_title=title)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        established = assoc.is_established
        reason = (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) if assoc.is_rejected else None
        if established:
            assoc.release()
        return established, reason

    assert associate("GOOD") == (True, None)
    assert associate("STRANGER") == (False, (0x01, 0x03))
    assert associate("ELSEWHERE") == (False, (0x01, 0x03))


def test_sigterm_lets_the_open_association_finish_then_stops(start_scp, tmp_path):
    proc, port = start_scp()
    _, paths = synthetic_study(tmp_path / "in", count=3)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, dcmread(paths[0]).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.send_c_store(paths[0]).Status == 0
    proc.popen.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.alive()  # still serving the open association
    refused = AE(ae_title="LATE")
    refused.add_requested_context(CTImageStorage)
    assert not refused.associate("127.0.0.1", port, ae_title="ROUTER").is_established
    for path in paths[1:]:
        assert assoc.send_c_store(path).Status == 0
    assoc.release()
    assert proc.popen.wait(15) == 0
    assert "0 associations aborted" in proc.log()
    assert ReceivedInstance.objects.count() == 3


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_idle_associations_cost_next_to_no_cpu(start_scp):
    """The SCP's reactor waits on its sockets (apps/ingest/reactor.py) rather than spinning: four
    associations held open and silent for 3 s use a small fraction of a CPU second between them (spinning,
    they used 2.8)."""
    proc, port = start_scp()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    held = [ae.associate("127.0.0.1", port, ae_title="ROUTER") for _ in range(4)]
    try:
        assert all(a.is_established for a in held)
        time.sleep(0.5)
        before = cpu_seconds(proc.pid)
        time.sleep(3)
        used = cpu_seconds(proc.pid) - before
    finally:
        for assoc in held:
            assoc.release()
    assert used < 0.3, f"{used:.2f} CPU seconds for 3 s of four idle associations"


def test_a_study_is_handed_over_when_the_association_moves_on_to_the_next(start_scp, tmp_path):
    """Studies sent one after another in one association: the first study's pipeline starts while the
    next still arrives, not at the association's end. The study comes to exist (study_register, then its chain) when the
    sender moves on to the next study; the study still arriving waits for the association's end."""
    from apps.studies.models import Study

    _, port = start_scp()
    first, first_files = synthetic_study(tmp_path / "a", count=3)
    second, second_files = synthetic_study(tmp_path / "b", count=2)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    try:
        for path in [*first_files, second_files[0]]:
            assert assoc.send_c_store(path).Status == 0x0000
        wait_until(lambda: Study.objects.filter(study_instance_uid=first).exists(), timeout=10)
        assert not Study.objects.filter(study_instance_uid=second).exists()
        assert assoc.send_c_store(second_files[1]).Status == 0x0000
    finally:
        assoc.release()
    wait_until(lambda: Study.objects.filter(study_instance_uid=second).exists(), timeout=10)
    assert ReceivedInstance.objects.filter(study_instance_uid=first).count() == 3
    assert ReceivedInstance.objects.filter(study_instance_uid=second).count() == 2
