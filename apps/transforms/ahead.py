"""Transform a delivery's files in a process of their own, ahead of the sender (issue 17).

A transform is Python work (parse the header, rewrite it, write the copy: 1.5 to 3 ms an instance); a C-STORE
is mostly waiting for the destination's answer. Done one after the other they add up; in two threads they do
not overlap, for both hold the interpreter's lock. So each process that delivers keeps one helper process
(`python -m apps.transforms.ahead`, started at its first transformed delivery, kept for the next ones) that
transforms the files in order while the sender sends those already made.

The helper imports the engine only (no Django, no database). It gets the profile and the secret through its
pipe (never its command line or environment), and answers one outcome per file, in order:
  ("made", sha256, sop_instance_uid) | ("held", reason) | ("secret",) | ("oserror", strerror) | ("error", type name)
No outcome carries a value of the file. The caller treats the outcomes exactly as when it transforms in its
own process (`outcome` below is the one function both run). If the helper cannot start, dies or stops
answering, the caller transforms the rest itself: slower, never lost.
"""

import logging
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from . import engine

logger = logging.getLogger(__name__)

ANSWER_SECONDS = 60.0  # the most one file may take in the helper before it is given up on
ROOT = Path(__file__).resolve().parents[2]  # where `python -m apps.transforms.ahead` finds the package


def outcome(source: Path, target: Path, profile: engine.Profile, secret: bytes) -> tuple:
    """Transform one file; what happened, as the helper reports it."""
    try:
        made = engine.transform(source, target, profile, secret)
    except engine.Held as held:
        return ("held", held.reason)
    except engine.SecretNeeded:
        return ("secret",)
    except OSError as exc:  # our disk, not the data
        return ("oserror", exc.strerror or type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - a file the engine cannot rewrite; its message could quote a value
        return ("error", type(exc).__name__)
    return ("made", made.sha256, made.sop_instance_uid)


class Job:
    """One list of files handed to the helper; `next()` is the next file's outcome, in order."""

    def __init__(self, helper: "Helper", pairs: list[tuple[Path, Path]], profile: engine.Profile, secret: bytes):
        self.helper = helper
        self.pairs = pairs
        self.profile = profile
        self.secret = secret
        self.done = 0
        self.lost = False  # the helper failed: the rest is transformed here

    def next(self) -> tuple:
        index = self.done
        self.done += 1
        answer = None if self.lost else self.helper.answer()
        if answer is None and not self.lost:
            self.lost = True
            logger.warning("transform helper stopped answering: the rest of this delivery is transformed in-process")
        if self.done == len(self.pairs):
            self.helper.release()
        return answer if answer is not None else outcome(*self.pairs[index], self.profile, self.secret)

    def finish(self) -> None:
        """Read what is left (the sender stopped early): the helper is then free for the next job."""
        while self.done < len(self.pairs):
            self.next()


class Helper:
    """The helper process of this process, and its pipe. One job at a time."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.send: Connection | None = None
        self.recv: Connection | None = None
        self.lock = threading.Lock()

    def start_job(self, pairs: list[tuple[Path, Path]], profile: engine.Profile, secret: bytes) -> Job | None:
        """The job, started; None when the helper is busy with another thread's job or cannot run."""
        if not pairs or not self.lock.acquire(blocking=False):
            return None
        try:
            self._ensure()
            self.send.send(("job", profile, secret, [(str(s), str(t)) for s, t in pairs]))
        except (OSError, EOFError, ValueError) as exc:
            logger.warning("transform helper unavailable (%s): transforming in-process", type(exc).__name__)
            self._stop()
            self.lock.release()
            return None
        return Job(self, pairs, profile, secret)

    def answer(self) -> tuple | None:
        try:
            if self.recv.poll(ANSWER_SECONDS):
                return self.recv.recv()
        except Exception:  # noqa: BLE001 - a broken pipe, a torn message: the helper is replaced
            logger.exception("transform helper: no answer")
        self._stop()  # dead, or stuck on a file: a new one starts at the next job
        return None

    def release(self) -> None:
        self.lock.release()

    def _ensure(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self._stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "apps.transforms.ahead"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        # The connections own their descriptors (copies): the pipe objects' own are closed at once.
        self.send = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.recv = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()

    def _stop(self) -> None:
        if self.process is None:
            return
        self.send.close()
        self.recv.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = self.send = self.recv = None


_helper = Helper()
_helper_pid = os.getpid()


def start(pairs: list[tuple[Path, Path]], profile: engine.Profile, secret: bytes) -> Job | None:
    """Hand `pairs` (source, target) to this process's helper; None: transform them in-process."""
    global _helper, _helper_pid
    if os.getpid() != _helper_pid:  # a forked child (a Celery pool process) gets a helper of its own
        _helper, _helper_pid = Helper(), os.getpid()
    return _helper.start_job(pairs, profile, secret)


def serve(recv: Connection, send: Connection) -> None:
    """The helper's loop: a job, its outcomes one by one, the next job; ends when its parent is gone."""
    while True:
        try:
            kind, profile, secret, pairs = recv.recv()
        except (EOFError, OSError):
            return
        if kind != "job":
            return
        for source, target in pairs:
            send.send(outcome(Path(source), Path(target), profile, secret))


def main() -> None:
    # The pipe to the parent is the original stdout; anything a library prints goes to stderr instead.
    answers = os.dup(1)
    os.dup2(2, 1)
    serve(Connection(os.dup(0), writable=False), Connection(answers, readable=False))


if __name__ == "__main__":
    main()
