"""Wake pynetdicom's threads when there is something to do, instead of letting them poll.

pynetdicom 3.0.4's DUL reactor checks its socket and queues in a loop and, when it found nothing, sleeps
`_run_loop_delay` (1 ms) before looking again; the association thread looks for a message, then sleeps
1 ms. In a strictly request-response exchange (a sender waits for each C-STORE's answer) every step pays
it: the next request waits for the DUL to wake, our answer (handed to the DUL through
`to_provider_queue`) too, and the association thread for the request (figures: docs/BENCHMARKS.md).

`install()` (in the EVT_CONN_OPEN handler, before the association's threads start) changes one
association:
- its DUL does not sleep; when a pass found nothing to read it waits in poll(2) on its socket and on a
  pipe written whenever a primitive is queued for sending, up to IDLE_WAIT while the association is
  established (what nothing signals, a timer that expired, is still seen within that time), 1 ms before
  and after (negotiation, release: as pynetdicom, and its stop waits for this thread in a busy loop);
- its association thread waits on the message queue instead of polling it, and is woken as well by what
  the DUL hands it besides messages (a release request, an abort), so an association ends at once.
It returns the function that closes the pipe, for when the association's thread ends.

The association loop's own 1 ms sleep at the top of each pass is left alone: it overlaps the DUL's
reading of the next request, and skipping it gained nothing measurable (docs/BENCHMARKS.md).
"""

import contextlib
import os
import queue
import select
import threading
import time
from collections.abc import Callable

# The longest an established association's DUL waits without a wakeup: an idle one wakes 50 times a second.
IDLE_WAIT = 0.02
# pynetdicom's own pause, before the association is established and once it is no longer.
SHORT_WAIT = 0.001


class _WakingQueue(queue.Queue):
    """A queue whose every put also calls `wake`."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Pipe:
    """A self-pipe. Once closed, its descriptor numbers may belong to another file or connection, so
    neither `wake` nor `drain` touches them after `close`."""

    def __init__(self) -> None:
        self.read_end, self._write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._open = True

    def wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):  # full: a wakeup is pending anyway
            if self._open:
                os.write(self._write_end, b"\0")

    def drain(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            if self._open:
                os.read(self.read_end, 4096)

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                os.close(self._write_end)
                os.close(self.read_end)


def install(assoc) -> Callable[[], None]:
    dul, dimse = assoc.dul, assoc.dimse
    pipe = _Pipe()
    sock = dul.socket.socket  # set before EVT_CONN_OPEN; None once the connection is closed
    poller = select.poll()
    poller.register(pipe.read_end, select.POLLIN)
    poller.register(sock, select.POLLIN)
    dul.to_provider_queue = _WakingQueue(pipe.wake)
    # Release and abort indications go to the association thread this way, messages by msg_queue.
    dul.to_user_queue = _WakingQueue(lambda: dimse.msg_queue.put((None, None)))
    dul._run_loop_delay = 0
    transport_event = dul._is_transport_event

    def transport_event_or_wait() -> bool:
        if transport_event():
            return True
        if dul._kill_thread or not dul.event_queue.empty() or not dul.to_provider_queue.empty():
            return False
        if not assoc.is_established or dul.socket is None or dul.socket.socket is not sock:
            time.sleep(SHORT_WAIT)
            return False
        try:
            ready = poller.poll(IDLE_WAIT * 1000)
        except OSError:
            time.sleep(SHORT_WAIT)
            return False
        if any(fd == pipe.read_end for fd, _ in ready):
            pipe.drain()
        return False

    def get_msg_or_wait(block: bool = False):
        # Asked without blocking, after a 1 ms sleep; wait instead (a (None, None) only wakes the loop).
        # A blocking read (a C-GET's C-STORE waiting for its answer) waits as pynetdicom's does; a wakeup then
        # means a release or an abort, and its (None, None) is the "no answer" it reports.
        try:
            return dimse.msg_queue.get(block=True, timeout=dimse.dimse_timeout if block else IDLE_WAIT)
        except queue.Empty:
            return None, None

    dul._is_transport_event = transport_event_or_wait
    dimse.get_msg = get_msg_or_wait
    return pipe.close
