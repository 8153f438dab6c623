"""Who may hold a connection to the SCP: pending connections (not yet associated) apart from associations,
and per source address limits, so that one host, silent or flooding, cannot keep the others out.

pynetdicom counts every acceptor thread as an association, from the connect on: 40 connections that never
send an A-ASSOCIATE-RQ used to fill the router for the ACSE timeout (30 s), and again on every reconnect.
Here a connection is *pending* from its accept until its A-ASSOCIATE-RQ has arrived in full, within the
negotiation deadline (guard.py reads it), and only then asks for an association slot:

- at the accept (the acceptor thread, before any thread is started for it): refused, by closing it, when
  the process holds `pending` pending connections, or its address holds `pending_per_address`, or (when
  set; off by default) its address opened more than `rate_per_address` connections a second (on average;
  bursts up to RATE_BURST_SECONDS times that);
- at its A-ASSOCIATE-RQ: rejected as transient, local limit exceeded (2, 3, 2), when the process holds
  `associations` associations, or its address `associations_per_address` (an allow-list entry with a host
  and `max_associations` sets that host's own figure);
- also at its A-ASSOCIATE-RQ, *paced*, not refused: while another address holds an association here, an
  address starts at most `pace_per_address` associations a second (on average; bursts up to
  RATE_BURST_SECONDS times that); one beyond waits its turn (at most PACE_WAIT_MAX seconds) before it is
  answered. A host that associates and releases in a loop would otherwise take half the process from a
  modality sending a study (they share one interpreter); waiting, its loop slows to that rate. A host alone
  is never paced, whatever its rate (a modality with an association per instance).

Behind a load balancer that sends the PROXY protocol the address is the client's: the per-address pending
limit is applied once the header is read (the balancer's own address is not limited).

Refusals are counted by reason (the heartbeat writes the counts; /metrics serves them) and logged once per
address and reason per minute, with how many were refused meanwhile.
"""

import logging
import socket
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)
LOG_EVERY = 60.0  # seconds between two log lines for one (address, reason)
RATE_BURST_SECONDS = 2.5  # an address may open this many seconds' worth of connections at once
PACE_WAIT_MAX = 1.0  # the longest an association request is held before it is answered

PENDING = "pending"  # the process's pending connections are all taken
PENDING_PER_ADDRESS = "pending_per_address"
ASSOCIATIONS = "associations"
ASSOCIATIONS_PER_ADDRESS = "associations_per_address"
NEGOTIATION_TIMEOUT = "negotiation_timeout"  # dropped: no complete A-ASSOCIATE-RQ within the deadline
RATE_PER_ADDRESS = "rate_per_address"
REASONS = (PENDING, PENDING_PER_ADDRESS, ASSOCIATIONS, ASSOCIATIONS_PER_ADDRESS, NEGOTIATION_TIMEOUT, RATE_PER_ADDRESS)


@dataclass(frozen=True)
class DoorLimits:
    """settings.SCP_* (docs/security.md)."""

    pending: int = 64
    pending_per_address: int = 8
    associations: int = 16
    associations_per_address: int = 8
    negotiation_timeout: float = 5.0
    rate_per_address: float = 0.0  # new connections a second, on average; 0: no limit
    pace_per_address: float = 25.0  # associations a second while others are served, on average; 0: no pacing


@dataclass(eq=False)
class Ticket:
    """One accepted connection: where from, and whether it holds an association slot yet."""

    address: str
    limited: bool = True  # False for a load balancer's connection until its PROXY header names the client
    associated: bool = False
    done: bool = False
    opened: float = field(default_factory=lambda: time.monotonic())


class Door:
    def __init__(self, limits: DoorLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._tickets: weakref.WeakKeyDictionary[socket.socket, Ticket] = weakref.WeakKeyDictionary()
        self._own_figures: dict[str, int] = {}  # address -> associations, from the allow-list
        self.refused: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when counted)
        self._paces: dict[str, tuple[float, float]] = {}  # the same, for associations (pace)
        self.paced: Counter[str] = Counter()  # associations held for their turn, by address
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}

    # The acceptor thread ----------------------------------------------------------------------------------

    def admit(self, sock: socket.socket, address: str, *, limited: bool = True) -> bool:
        """A new connection: True if it may wait for its A-ASSOCIATE-RQ (its ticket is kept), else it is to
        be closed at once."""
        with self._lock:
            live = self._live()
            pending = [t for t in live if not t.associated]
            reason = None
            if len(pending) >= self.limits.pending:
                reason = PENDING
            elif limited and sum(1 for t in pending if t.address == address) >= self.limits.pending_per_address:
                reason = PENDING_PER_ADDRESS
            elif limited and not self._token(address):
                reason = RATE_PER_ADDRESS
            if reason is None:
                self._tickets[sock] = Ticket(address=address, limited=limited)
                return True
        self._refuse(address, reason)
        return False

    # The association's threads ----------------------------------------------------------------------------

    def ticket(self, sock: socket.socket | None) -> Ticket | None:
        with self._lock:
            return self._tickets.get(sock) if sock is not None else None

    def readdress(self, ticket: Ticket, address: str) -> bool:
        """A load balancer's connection names its client (PROXY header): the per-address limits are the
        client's from now on. False: the client holds its pending connections already (drop this one)."""
        with self._lock:
            pending = [t for t in self._live() if not t.associated and t is not ticket]
            reason = None
            if sum(1 for t in pending if t.limited and t.address == address) >= self.limits.pending_per_address:
                reason = PENDING_PER_ADDRESS
            elif not self._token(address):
                reason = RATE_PER_ADDRESS
            else:
                ticket.address, ticket.limited = address, True
        if reason is not None:
            self._refuse(address, reason)
        return reason is None

    def associate(self, ticket: Ticket) -> bool:
        """Its A-ASSOCIATE-RQ arrived: True if it takes an association slot, False to reject it as transient."""
        with self._lock:
            associated = [t for t in self._live() if t.associated]
            own = self._own_figures.get(ticket.address, self.limits.associations_per_address)
            reason = None
            if len(associated) >= self.limits.associations:
                reason = ASSOCIATIONS
            elif ticket.limited and sum(1 for t in associated if t.address == ticket.address) >= own:
                reason = ASSOCIATIONS_PER_ADDRESS
            else:
                ticket.associated = True
        if reason is not None:
            self._refuse(ticket.address, reason)
        return reason is None

    def pace(self, ticket: Ticket) -> float:
        """Its A-ASSOCIATE-RQ arrived: seconds it waits for its turn before it asks for a slot (0: none)."""
        rate = self.limits.pace_per_address
        if rate <= 0 or not ticket.limited:
            return 0.0
        quiet = None
        with self._lock:
            tokens = _drawn(self._paces, ticket.address, rate)
            if not any(t.associated and t.address != ticket.address for t in self._live()):
                tokens = max(tokens, 0.0)  # alone: counted, never held
            tokens = max(tokens, -rate * PACE_WAIT_MAX)  # the wait is bounded, and so is the debt
            self._paces[ticket.address] = (tokens, time.monotonic())
            wait = -tokens / rate if tokens < 0 else 0.0
            if wait:
                self.paced[ticket.address] += 1
                quiet = self._quiet_since_reported(ticket.address, "paced")
        if quiet is not None:
            also = f" ({quiet} more since the last report)" if quiet else ""
            logger.warning(
                "associations from %s paced to %g a second while others are served%s", ticket.address, rate, also
            )
        return wait

    def closed(self, ticket: Ticket | None) -> None:
        """Its threads ended. One that never completed its A-ASSOCIATE-RQ and lasted the negotiation
        deadline was dropped for it (by the guard, or by pynetdicom's wait for the request)."""
        if ticket is None:
            return
        ticket.done = True
        if not ticket.associated and time.monotonic() - ticket.opened >= self.limits.negotiation_timeout * 0.99:
            self._refuse(ticket.address, NEGOTIATION_TIMEOUT)

    def own_figures(self, figures: dict[str, int]) -> None:
        """Per host association limits of the allow-list's entries (read with the list at each association,
        and at each heartbeat: a host held at its limit never gets to read it)."""
        self._own_figures = dict(figures)

    # Counting ---------------------------------------------------------------------------------------------

    def refusals(self) -> dict[str, int]:
        """The refusals so far by reason, copied under the lock (the acceptor thread adds to them)."""
        with self._lock:
            return dict(self.refused)

    def paced_total(self) -> int:
        """Associations held for their turn so far (`pace`)."""
        with self._lock:
            return sum(self.paced.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            live = self._live()
        return {"pending": sum(1 for t in live if not t.associated), "associated": sum(1 for t in live if t.associated)}

    def _token(self, address: str) -> bool:
        """One connection from `address` within its rate (a token bucket; called under the lock)."""
        rate = self.limits.rate_per_address
        if rate <= 0:
            return True
        tokens = _drawn(self._buckets, address, rate)
        refused = tokens < 0
        self._buckets[address] = (tokens + 1 if refused else tokens, time.monotonic())  # a refusal draws nothing
        return not refused

    def _live(self) -> list[Ticket]:
        """Tickets whose connection is open: its thread has not ended and its socket is not closed (a
        connection that failed before its association started is counted no longer than that). The others
        are dropped here: a socket can outlive its connection (pynetdicom's objects hold it in reference
        cycles until the garbage collector runs), and a flood would otherwise make every accept walk
        thousands of them."""
        live, ended = [], []
        for sock, ticket in list(self._tickets.items()):
            (ended if ticket.done or sock.fileno() == -1 else live).append((sock, ticket))
        for sock, _ in ended:
            self._tickets.pop(sock, None)
        return [ticket for _, ticket in live]

    def _quiet_since_reported(self, address: str, reason: str) -> int | None:
        """Called under the lock for each refusal (or pacing) of `address` for `reason`: None when one was
        logged within LOG_EVERY (this one is counted for the next line), else how many went unlogged since."""
        now = time.monotonic()
        last, quiet = self._logged.get((address, reason), (0.0, 0))
        if last and now - last < LOG_EVERY:
            self._logged[(address, reason)] = (last, quiet + 1)
            return None
        self._logged[(address, reason)] = (now, 0)
        if len(self._logged) > 10_000:  # many addresses: forget the oldest
            for key in sorted(self._logged, key=lambda k: self._logged[k][0])[:5_000]:
                del self._logged[key]
        return quiet

    def _refuse(self, address: str, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1
            quiet = self._quiet_since_reported(address, reason)
        if quiet is None:
            return
        also = f" ({quiet} more since the last report)" if quiet else ""
        logger.warning("connection from %s refused: %s limit%s", address, reason.replace("_", " "), also)


def _drawn(buckets: dict[str, tuple[float, float]], address: str, rate: float) -> float:
    """The tokens left in `address`'s bucket (refilled at `rate` a second, holding RATE_BURST_SECONDS' worth)
    once one is drawn: negative when the bucket is in debt. The caller stores what it keeps. Under the lock.
    With many addresses, those whose buckets are full again are forgotten."""
    burst = max(rate * RATE_BURST_SECONDS, 1.0)
    now = time.monotonic()
    tokens, then = buckets.get(address, (burst, now))
    if len(buckets) > 10_000:
        for other in [a for a, (t, w) in buckets.items() if t + (now - w) * rate >= burst]:
            del buckets[other]
    return min(burst, tokens + (now - then) * rate) - 1
