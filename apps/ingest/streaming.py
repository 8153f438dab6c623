"""Datasets received straight into the spool, a PDU at a time.

With pynetdicom's `STORE_RECV_CHUNKED_DATASET`, each C-STORE's dataset is written to a temp file as its
P-DATA arrives (behind the file meta pynetdicom writes first) and the handler gets the file's path, not
the bytes: memory stays at one PDU whatever the instance's size, and the handler renames the file into
place instead of encoding and writing a copy. pynetdicom makes that file with `NamedTemporaryFile` in its
reactor (DUL) thread; `install()` puts `_temp_file` in its place, which makes it, for the associations of
a `Streams`, in the spool's temp folder (`TempFile`: a failed write is held for the handler, not raised
in pynetdicom's thread).

Each association's temp files are tracked from creation. The handler takes its file (`take`) and
discards what it did not adopt; whatever is left when the association's thread ends (`end`: a dataset cut
off by an abort, a request queued but never served because the association ended first) is removed then,
however it ended. The association thread is the right moment: it ends only after its DUL thread, the
only writer, has stopped (pynetdicom's `Association.kill` waits for it).
"""

import logging
import threading
from pathlib import Path
from tempfile import NamedTemporaryFile

from pynetdicom import _config, dimse_messages

from .storage import Spool, TempFile

logger = logging.getLogger(__name__)

# id(association) -> the Streams that receives its datasets
_owners: dict[int, "Streams"] = {}


def install() -> None:
    """Receive every C-STORE dataset to a file (process-wide; idempotent)."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _temp_file


def _temp_file(*args, **kwargs):
    # Called by pynetdicom in the DUL thread of the association the dataset belongs to.
    assoc = getattr(threading.current_thread(), "assoc", None)
    streams = _owners.get(id(assoc))
    if streams is None:  # not one of ours: pynetdicom's own behaviour
        return NamedTemporaryFile(*args, **kwargs)
    return streams.open(assoc)


class Streams:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._lock = threading.Lock()
        self._open: dict[int, dict[str, TempFile]] = {}  # id(association) -> its files by name

    def watch(self, assoc) -> None:
        """Receive `assoc`'s datasets into the spool until `end(assoc)`. Call before its threads start."""
        with self._lock:
            self._open[id(assoc)] = {}
            _owners[id(assoc)] = self

    def open(self, assoc) -> TempFile:
        temp = self.spool.open_temp()
        if temp.error is not None:
            logger.error("cannot create a temp file in the spool: %s", temp.error)
        with self._lock:
            self._open.setdefault(id(assoc), {})[temp.name] = temp
        return temp

    def take(self, assoc, path: Path | str | None) -> TempFile | None:
        """The file a C-STORE's dataset was received into; the caller discards it when done."""
        if path is None:
            return None
        with self._lock:
            return self._open.get(id(assoc), {}).pop(str(path), None)

    def end(self, assoc) -> None:
        """When the association's thread ends: remove the temp files nobody took."""
        with self._lock:
            _owners.pop(id(assoc), None)
            left = self._open.pop(id(assoc), {})
        for temp in left.values():
            temp.discard()
        if left:
            logger.info("association ended with %d datasets unanswered: their temp files removed", len(left))
