"""A destination that records when each instance arrives: a pynetdicom storage SCP in its own process.

Run: python bench/arrival_scp.py PORT AE_TITLE FILE

For every C-STORE it appends `SOPInstanceUID monotonic_seconds` to FILE (line-buffered) as soon as the
request's dataset has been received, before answering; CLOCK_MONOTONIC is shared by every process on
Linux, so the benchmark compares these times with its own. Every storage SOP class in the common transfer
syntaxes and C-ECHO (the router's health check), TCP_NODELAY on each connection (as bench/pynetdicom_scp.py:
the documented least SCP), nothing written but the line: the destination's own cost stays out of the
hand-off measured.
"""

import socket
import sys
import time

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification


def on_open(event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> None:
    port, ae_title, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the server's life

    def on_store(event) -> int:
        arrived = time.monotonic()
        out.write(f"{event.request.AffectedSOPInstanceUID} {arrived:.6f}\n")
        return 0x0000

    ae = AE(ae_title)
    ae.maximum_pdu_size = 131072
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)  # the router's health check is a C-ECHO, as to any PACS
    print(f"listening on {port}", flush=True)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])


if __name__ == "__main__":
    main()
