"""Server push for the worklist and the board: a server-sent-events stream per open page.

Each stream asks a cheap change marker (selectors.worklist_marker) every TICK seconds and sends an event
when it changed; the page then fetches its rows. The marker is read from the database, so a change made by
any process (a Celery worker assigning, another web process, an admin) shows within a tick, on SQLite
(the embedded default, no Redis) as on PostgreSQL, with no broker of messages to keep in step.

A stream holds a web thread while it lasts: it ends after LIFETIME seconds and the browser's EventSource
reconnects by itself after `retry:` (the first event of the new stream carries the marker, so a change made
in between is not missed). Production web runs gunicorn with threads (Procfile); a process serves at most
WORKLIST_PUSH_STREAMS streams at once (`admit`), so they never take every thread. When EventSource fails, or
the server has no room for its stream, the page falls back to polling (static/reading/live.js)."""

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator

TICK = 0.25  # seconds between two looks at the marker: the push's share of the 1 s budget
LIFETIME = 30.0  # seconds a stream holds a web thread before the browser reconnects
RETRY_MS = 500  # how soon the browser reconnects after a stream ended
KEEPALIVE = 1.0  # seconds between comments when nothing changed: a vanished client is noticed on the write


def marker_events(
    marker: Callable[[], str],
    *,
    tick: float = TICK,
    lifetime: float = LIFETIME,
    keepalive: float = KEEPALIVE,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[str]:
    """The text of an event stream: `retry:`, then an event `changed` with the marker at once and each time
    it changes, a comment every `keepalive` seconds otherwise, until `lifetime` has passed."""
    yield f"retry: {RETRY_MS}\n\n"
    start = last_write = monotonic()
    last = None
    while True:
        current = marker()
        now = monotonic()
        if current != last:
            yield f"event: changed\ndata: {current}\n\n"
            last, last_write = current, now
        elif now - last_write >= keepalive:
            yield ": keepalive\n\n"
            last_write = now
        if now - start >= lifetime:
            return
        sleep(tick)


logger = logging.getLogger(__name__)

REFUSALS_LOGGED_EVERY = 60.0  # seconds: one line for however many pages were refused meanwhile

_open = 0
_open_lock = threading.Lock()
_refused = 0
_refused_logged_at = -REFUSALS_LOGGED_EVERY


def streams_open() -> int:
    """Streams this process is serving now (each holds a web thread and a database connection)."""
    return _open


class Held:
    """A stream with its place among this process's open streams, given back once, however it ends: its
    lifetime ran out, the client went away (the server closes the response), or it was never read at all: a
    response closed before its first write, or one dropped without being closed (a client that never reads
    it; the place then comes back when the stream is freed)."""

    def __init__(self, events: Iterator[str], on_close: Callable[[], None]) -> None:
        self._events = iter(events)
        self._on_close = on_close
        # Only the count: the database connection on_close closes belongs to the thread that served the stream.
        self._place = weakref.finalize(self, _give_back)

    def __iter__(self) -> "Held":
        return self

    def __next__(self) -> str:
        try:
            return next(self._events)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._place():  # given back already (a finalizer runs once)
            return
        try:
            getattr(self._events, "close", lambda: None)()
        finally:
            self._on_close()


def _give_back() -> bool:
    global _open
    with _open_lock:
        _open -= 1
    return True


def admit(events: Iterator[str], *, on_close: Callable[[], None], limit: int | None = None) -> Held | None:
    """`events` as a Held stream, or None when `limit` streams are open in this process already: each holds a
    web thread for its lifetime, and streams must leave threads for pages, actions, the API and /metrics. A
    page refused (the view answers 204) polls instead (docs/worklist.md)."""
    global _open
    with _open_lock:
        if limit is not None and _open >= limit:
            return None
        _open += 1
    return Held(events, on_close)


def refused(*, limit: int, monotonic: Callable[[], float] = time.monotonic) -> None:
    """Count a page refused a stream; say so in the log at most once every REFUSALS_LOGGED_EVERY seconds."""
    global _refused, _refused_logged_at
    with _open_lock:
        _refused += 1
        now = monotonic()
        if now - _refused_logged_at < REFUSALS_LOGGED_EVERY:
            return
        count, _refused, _refused_logged_at = _refused, 0, now
    logger.warning(
        "worklist push: %d page(s) refused a stream, %d open in this process (WORKLIST_PUSH_STREAMS): they poll "
        "instead; raise WEB_THREADS and WORKLIST_PUSH_STREAMS for more",
        count,
        limit,
    )
