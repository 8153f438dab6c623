"""The spool: each received instance is written to a temp file, fsync'ed, then renamed into place.

The SCP receives each dataset straight into a temp file, a PDU at a time (`TempFile`, see streaming.py),
and `adopt()`s it once it is understood: an instance costs one write of its bytes and one PDU of memory,
whatever its size.

Paths come from a uuid and the receive time, never from UIDs or any other text the sender controls.
Temp files are named by host and process, so the temp file a killed SCP left behind can be told from one
another SCP on the same shared storage is still writing, and swept.
"""

import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

# A temp file from another host is swept once this old: no single write takes a day.
ORPHAN_AGE = 24 * 3600


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._made: set[Path] = set()
        self._prefix = f"{socket.gethostname()}.{os.getpid()}."

    def sweep(self) -> int:
        """Remove the temp files of processes that are gone (killed mid-write); returns how many.

        Ours: same host, and the pid no longer runs. Any: older than ORPHAN_AGE.
        A temp file was never acknowledged to a sender, so removing it loses nothing."""
        host = socket.gethostname()
        removed = 0
        for temp in self.tmp.glob("*.part"):
            owner, _, rest = temp.name.partition(".")
            pid = rest.partition(".")[0]
            try:
                stale = time.time() - temp.stat().st_mtime > ORPHAN_AGE  # no write takes a day
            except FileNotFoundError:
                continue
            if owner == host and pid.isdigit():
                gone = stale or (int(pid) != os.getpid() and not _running(int(pid)))
            else:
                gone = stale
            if gone:
                temp.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.warning("spool: removed %d temp files left by stopped processes", removed)
        return removed

    def open_temp(self) -> "TempFile":
        """A new temp file, named by host, process and a uuid. It never raises: see TempFile."""
        return TempFile(self.tmp / f"{self._prefix}{uuid.uuid4().hex}.part")

    def adopt(self, temp: "TempFile") -> str:
        """Make `temp` durable and put it in place; return its path relative to the root. Raises OSError
        (the temp file is then the caller's to discard)."""
        if temp.error is not None:
            raise temp.error
        relative = Path("instances") / datetime.now(UTC).strftime("%Y/%m/%d/%H") / f"{uuid.uuid4().hex}.dcm"
        final = self.root / relative
        folder = final.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        temp.sync()
        os.replace(temp.name, final)
        temp.adopted = True
        _fsync_dir(folder)
        return str(relative)

    def write(self, data: bytes) -> str:
        """Write `data` durably and return its path relative to the root. Raises OSError."""
        temp = self.open_temp()
        try:
            temp.write(data)
            return self.adopt(temp)
        finally:
            temp.discard()

    def recent_files(self, *, hours: int, older_than: float, now: float | None = None) -> list[str]:
        """Relative paths of the instance files written in the last `hours` hours (by folder) and not
        touched for `older_than` seconds: the candidates when looking for files nobody recorded."""
        now = now or time.time()
        found = []
        for hour in range(hours + 1):
            folder = self.root / "instances" / datetime.fromtimestamp(now - hour * 3600, UTC).strftime("%Y/%m/%d/%H")
            if not folder.is_dir():
                continue
            for path in folder.glob("*.dcm"):
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime >= older_than:
                        found.append(str(path.relative_to(self.root)))
        return found

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)


class TempFile:
    """A file being received, written as its bytes arrive.

    A failure to create or write it is held in `error`, never raised: the writer is pynetdicom's reactor
    thread, which an exception would end (and the association with it, unanswered); the C-STORE handler
    reads `error` and answers 0xA700. Writes after a failure are dropped. `file.flush()` is there
    because pynetdicom calls it after each write; writes are unbuffered (one os.write per PDU).
    """

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.error: OSError | None = None
        self.adopted = False
        self.file = self
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            self._fd = None
            self.error = exc

    def write(self, data) -> int:
        if self._fd is not None:
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError as exc:
                self.error = exc
                self.close()
        return len(data)

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        if self._fd is None:
            raise self.error or OSError("file closed")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def discard(self) -> None:
        """Close it, and remove it unless it was put in place."""
        self.close()
        if not self.adopted:
            with contextlib.suppress(OSError):
                os.unlink(self.name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
