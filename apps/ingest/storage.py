"""The spool: each received instance is written to a temp file, fsync'ed, then renamed into place.

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

    def write(self, data: bytes) -> str:
        """Write `data` durably and return its path relative to the root. Raises OSError."""
        name = uuid.uuid4().hex
        relative = Path("instances") / datetime.now(UTC).strftime("%Y/%m/%d/%H") / f"{name}.dcm"
        final = self.root / relative
        folder = final.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        temp = self.tmp / f"{self._prefix}{name}.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        return str(relative)

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
