"""The wakeups that replace pynetdicom's polling (apps/ingest/reactor.py), on stand-ins for its objects."""

import queue
import socket
from types import SimpleNamespace

from apps.ingest import reactor


def association():
    ours, peer = socket.socketpair()
    dul = SimpleNamespace(
        socket=SimpleNamespace(socket=ours),
        to_provider_queue=queue.Queue(),
        to_user_queue=queue.Queue(),
        event_queue=queue.Queue(),
        _kill_thread=False,
        _run_loop_delay=0.001,
        _is_transport_event=lambda: False,
    )
    assoc = SimpleNamespace(dul=dul, dimse=SimpleNamespace(msg_queue=queue.Queue()), is_established=True)
    return assoc, peer


def test_a_release_or_abort_for_the_association_thread_also_wakes_it():
    assoc, peer = association()
    close = reactor.install(assoc)
    try:
        assoc.dul.to_user_queue.put("A-RELEASE indication")
        assert assoc.dimse.msg_queue.get_nowait() == (None, None)  # the loop then sees the release
        assert assoc.dul.to_user_queue.get_nowait() == "A-RELEASE indication"
    finally:
        close()
        peer.close()


def test_the_dul_does_not_sleep_and_closing_twice_is_harmless():
    assoc, peer = association()
    close = reactor.install(assoc)
    assert assoc.dul._run_loop_delay == 0
    assoc.dul.to_provider_queue.put("A-RELEASE response")  # wakes the DUL through the pipe
    assert assoc.dul._is_transport_event() is False  # something to send: no wait
    close()
    close()
    assoc.dul.to_provider_queue.put("late")  # no write to a closed (maybe reused) descriptor
    peer.close()
