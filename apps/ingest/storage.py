"""The spool: each received instance is written to a temp file, fsync'ed, then renamed into place.

Paths come from a uuid and the receive time, never from UIDs or any other text the sender controls.
"""

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._made: set[Path] = set()

    def write(self, data: bytes) -> str:
        """Write `data` durably and return its path relative to the root. Raises OSError."""
        name = uuid.uuid4().hex
        relative = Path("instances") / datetime.now(UTC).strftime("%Y/%m/%d/%H") / f"{name}.dcm"
        final = self.root / relative
        folder = final.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        temp = self.tmp / f"{name}.part"
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

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
