"""A pynetdicom storage SCP for the tests: answers each C-STORE with the next status of a script."""

import threading
import time
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from apps.ingest.scp import TRANSFER_SYNTAXES

from .processes import free_port


class StatusSCP:
    def __init__(
        self,
        statuses: list[int] | None = None,
        *,
        ae_title: str = "PEER",
        folder: Path | None = None,
        delay: float = 0.0,
    ):
        self.statuses = list(statuses or [])
        self.delay = delay  # seconds before each answer: a slow destination
        self.default = 0x0000
        self.received: list[str] = []
        self.folder = folder
        self.port = free_port()
        self.ae_title = ae_title
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)

    def _store(self, event) -> int:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            status = self.statuses.pop(0) if self.statuses else self.default
            if status in (0x0000, 0xB000, 0xB006, 0xB007):
                self.received.append(str(event.request.AffectedSOPInstanceUID))
                if self.folder is not None:
                    (self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return status

    def __enter__(self) -> "StatusSCP":
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
