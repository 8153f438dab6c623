"""The least a pynetdicom storage SCP can do, as its documentation writes one: a reference, not a peer.

Run: python bench/pynetdicom_scp.py PORT FOLDER

Every storage SOP class in the common transfer syntaxes, a 128 KB maximum PDU (as the router's), TCP_NODELAY
on each connection (without it every answer waits on Nagle's algorithm), and a C-STORE handler that writes
`event.encoded_dataset()` to a new file in FOLDER and fsyncs it: no inspection, no database, no rename.
ingest_bench measures it beside the router to show what pynetdicom itself costs per instance on this
machine: the router cannot be faster than this with pynetdicom receiving.
"""

import os
import socket
import sys
import uuid

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts


def on_open(event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> None:
    port, folder = int(sys.argv[1]), sys.argv[2]
    os.makedirs(folder, exist_ok=True)

    def on_store(event) -> int:
        fd = os.open(os.path.join(folder, uuid.uuid4().hex), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, event.encoded_dataset())
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0x0000

    ae = AE("PYNETDICOM")
    ae.maximum_pdu_size = 131072
    ae.supported_contexts = AllStoragePresentationContexts
    print(f"listening on {port}", flush=True)
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)]
    ae.start_server(("127.0.0.1", port), evt_handlers=handlers)


if __name__ == "__main__":
    main()
