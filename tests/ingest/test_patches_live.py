"""On a real association to a running SCP, our patches of pynetdicom's private parts are in place and
working: the PDU guard reads each PDU, the reactor's wakeups replace its polling. (tests/ingest/test_reactor.py
checks their logic on stand-ins; this notices when pynetdicom stops calling what we replaced.)"""

import pytest
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.sop_class import Verification

from apps.ingest import guard, scp
from apps.ingest.storage import Spool

from ..support.processes import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_guard_and_the_reactor_are_installed_on_a_live_association(storage, monkeypatch):
    # serve() switches pynetdicom to receiving into files, process-wide: undone after, for other tests' peers.
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    port = free_port()
    [server] = scp.serve(
        host="127.0.0.1",
        listeners=[scp.Listener(port)],
        ae_title="ROUTER",
        spool=Spool(storage),
        on_studies_received=dict,
    )
    reads = []
    original = guard.PduGuard.read

    def counted(self):
        reads.append(1)
        return original(self)

    guard.PduGuard.read = counted
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        assert assoc.is_established
        wait_until(lambda: server.ae.active_associations, timeout=5, what="the SCP's side of the association")
        [theirs] = server.ae.active_associations
        dul = theirs.dul

        assert isinstance(dul._read_pdu_data.__self__, guard.PduGuard)
        assert dul._run_loop_delay == 0 and dul._is_transport_event.__name__ == "transport_event_or_wait"
        assert theirs.dimse.get_msg.__name__ == "get_msg_or_wait"
        before = len(reads)
        assert assoc.send_c_echo().Status == 0x0000
        assert len(reads) > before  # pynetdicom's DUL still reads PDUs through the guard
        assoc.release()
    finally:
        guard.PduGuard.read = original
        scp.stop([server], grace=1)


def test_an_admission_check_that_fails_refuses_the_caller_instead_of_admitting_it(storage, monkeypatch):
    from apps.ingest import services
    from apps.ingest.models import AllowedCaller

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    AllowedCaller.objects.create(ae_title="MODALITY")

    def broken(*args, **kwargs):
        raise ValueError("a certificate cryptography cannot parse")

    monkeypatch.setattr(services, "caller_allowed", broken)
    port = free_port()
    servers = scp.serve(
        host="127.0.0.1",
        listeners=[scp.Listener(port)],
        ae_title="ROUTER",
        spool=Spool(storage),
        on_studies_received=dict,
    )
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognised
    finally:
        scp.stop(servers, grace=1)
