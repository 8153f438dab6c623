"""Server push for the worklist and the board: a server-sent-events stream per open page.

Each stream asks a cheap change marker (selectors.worklist_marker) every TICK seconds and sends an event
when it changed; the page then fetches its rows. The marker is read from the database, so a change made by
any process (a Celery worker assigning, another web process, an admin) shows within a tick, on SQLite
(the embedded default, no Redis) as on PostgreSQL, with no broker of messages to keep in step.

A stream holds a web thread while it lasts: it ends after LIFETIME seconds and the browser's EventSource
reconnects by itself after `retry:` (the first event of the new stream carries the marker, so a change made
in between is not missed). Production web runs gunicorn with threads (Procfile). When EventSource fails
the page falls back to polling (templates/reading/base.html)."""

import threading
import time
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


_open = 0
_open_lock = threading.Lock()


def streams_open() -> int:
    """Streams this process is serving now (each holds a web thread and a database connection)."""
    return _open


def held(events: Iterator[str], *, on_close: Callable[[], None]) -> Iterator[str]:
    """`events`, counted in streams_open() while they last; `on_close` runs when they end, however they end
    (their lifetime, or the client gone: the next write fails and the server closes the generator)."""
    global _open
    with _open_lock:
        _open += 1
    try:
        yield from events
    finally:
        try:
            on_close()
        finally:
            with _open_lock:
                _open -= 1
