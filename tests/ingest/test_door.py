"""The door's arithmetic (apps/ingest/door.py), without a network: pending and association limits per
process and per address, the connection rate, the PROXY client's limits and the once-a-minute log."""

import logging
import socket

import pytest

from apps.ingest import door


@pytest.fixture
def sockets():
    made = []

    def make() -> socket.socket:
        sock = socket.socket()
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def test_pending_connections_are_bounded_per_address_and_per_process(sockets):
    entrance = door.Door(door.DoorLimits(pending=5, pending_per_address=2, rate_per_address=0))
    assert [entrance.admit(sockets(), "10.0.0.9") for _ in range(3)] == [True, True, False]
    assert [entrance.admit(sockets(), f"10.0.0.{n}") for n in range(1, 5)] == [True, True, True, False]
    assert entrance.refused == {"pending_per_address": 1, "pending": 1}
    assert entrance.counts() == {"pending": 5, "associated": 0}


def test_a_closed_or_ended_connection_gives_its_place_back(sockets):
    entrance = door.Door(door.DoorLimits(pending_per_address=1, rate_per_address=0))
    first = sockets()
    assert entrance.admit(first, "10.0.0.9")
    assert not entrance.admit(sockets(), "10.0.0.9")
    first.close()
    second = sockets()
    assert entrance.admit(second, "10.0.0.9")
    entrance.closed(entrance.ticket(second))
    assert entrance.admit(sockets(), "10.0.0.9")


def test_associations_are_bounded_per_address_unless_the_allow_list_gives_the_host_its_own(sockets):
    entrance = door.Door(door.DoorLimits(associations=10, associations_per_address=2, rate_per_address=0))
    tickets = []
    for _ in range(3):
        sock = sockets()
        assert entrance.admit(sock, "10.0.0.5")
        tickets.append(entrance.ticket(sock))
    assert [entrance.associate(t) for t in tickets] == [True, True, False]
    assert entrance.counts() == {"pending": 1, "associated": 2}
    entrance.own_figures({"10.0.0.5": 3})
    assert entrance.associate(tickets[2])


def test_the_process_association_limit_holds_whatever_the_address(sockets):
    entrance = door.Door(door.DoorLimits(associations=2, associations_per_address=8, rate_per_address=0))
    outcomes = []
    for n in range(3):
        sock = sockets()
        entrance.admit(sock, f"10.0.1.{n}")
        outcomes.append(entrance.associate(entrance.ticket(sock)))
    assert outcomes == [True, True, False]
    assert entrance.refused == {"associations": 1}


def test_the_connection_rate_allows_a_burst_then_the_rate(sockets, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(door.time, "monotonic", lambda: now[0])
    entrance = door.Door(door.DoorLimits(pending_per_address=100, rate_per_address=4))
    admitted = [entrance.admit(sockets(), "10.0.0.7") for _ in range(12)]
    assert admitted == [True] * 10 + [False] * 2  # 2.5 s worth at 4 a second
    now[0] += 0.5
    assert [entrance.admit(sockets(), "10.0.0.7") for _ in range(3)] == [True, True, False]
    assert entrance.admit(sockets(), "10.0.0.8")  # another address has its own bucket


def test_a_host_is_paced_only_while_another_is_served_and_never_waits_more_than_a_second(sockets, monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(door.time, "monotonic", lambda: now[0])
    entrance = door.Door(door.DoorLimits(pending_per_address=100, associations_per_address=100, pace_per_address=4))

    def request(address: str) -> tuple[door.Ticket, float]:
        sock = sockets()
        assert entrance.admit(sock, address)
        ticket = entrance.ticket(sock)
        return ticket, entrance.pace(ticket)

    alone = [request("10.0.0.7")[1] for _ in range(40)]  # ten times its burst, nobody else here
    assert alone == [0.0] * 40
    modality, wait = request("10.0.0.1")
    assert wait == 0.0 and entrance.associate(modality)  # now 10.0.0.1 is served
    with caplog.at_level(logging.WARNING, logger="apps.ingest.door"):
        waits = [request("10.0.0.7")[1] for _ in range(8)]
    # Its bucket was emptied while alone: each request now waits its turn at 4 a second, up to one second.
    assert waits == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [r.getMessage() for r in caplog.records] == [
        "associations from 10.0.0.7 paced to 4 a second while others are served"
    ]
    assert entrance.paced_total() == 8 and entrance.refused == {}
    now[0] += 10  # quiet for a while: its burst is back
    assert [request("10.0.0.7")[1] for _ in range(10)] == [0.0] * 10
    balancer = sockets()
    assert entrance.admit(balancer, "10.9.0.1", limited=False)
    assert entrance.pace(entrance.ticket(balancer)) == 0.0  # a balancer before its header names the client
    assert door.Door(door.DoorLimits(pace_per_address=0)).pace(door.Ticket("10.0.0.7")) == 0.0


def test_a_balancers_connection_takes_the_limits_of_the_client_its_header_names(sockets):
    entrance = door.Door(door.DoorLimits(pending_per_address=1, rate_per_address=0))
    through = [sockets() for _ in range(3)]
    assert all(entrance.admit(s, "10.9.0.1", limited=False) for s in through)  # the balancer: no per-address limit
    assert entrance.readdress(entrance.ticket(through[0]), "10.0.0.9")
    assert not entrance.readdress(entrance.ticket(through[1]), "10.0.0.9")
    assert entrance.readdress(entrance.ticket(through[2]), "10.0.0.10")


def test_refusals_are_logged_once_a_minute_per_address_and_reason(sockets, monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(door.time, "monotonic", lambda: now[0])
    entrance = door.Door(door.DoorLimits(pending_per_address=0, rate_per_address=0))
    with caplog.at_level(logging.WARNING, logger="apps.ingest.door"):
        for _ in range(50):
            entrance.admit(sockets(), "10.0.0.66")
        now[0] += 61
        entrance.admit(sockets(), "10.0.0.66")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "connection from 10.0.0.66 refused: pending per address limit",
        "connection from 10.0.0.66 refused: pending per address limit (49 more since the last report)",
    ]
    assert entrance.refused["pending_per_address"] == 51


def test_a_connection_that_lasted_the_negotiation_deadline_unassociated_is_counted_late(sockets, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(door.time, "monotonic", lambda: now[0])
    entrance = door.Door(door.DoorLimits(negotiation_timeout=5, rate_per_address=0))
    quick, slow = sockets(), sockets()
    entrance.admit(quick, "10.0.0.1")
    entrance.admit(slow, "10.0.0.2")
    entrance.closed(entrance.ticket(quick))  # a port check
    now[0] += 5
    entrance.closed(entrance.ticket(slow))
    assert entrance.refused == {"negotiation_timeout": 1}


def test_the_allow_lists_own_figures_are_per_host_and_the_highest_wins():
    from apps.ingest.services import Caller, association_figures

    allow = [
        Caller("CT_NORTH", "10.0.0.5", max_associations=4),
        Caller("CT_NORTH_2", "10.0.0.5", max_associations=12),
        Caller("MR_ANY", "", max_associations=30),  # no host: no address to give it to
        Caller("US", "10.0.0.6"),
    ]
    assert association_figures(allow) == {"10.0.0.5": 12}
