"""Stall benchmark: does a delivery ever wait for an answer that will not come, or pause a destination
that was only busy? (issue 14)

Run: .venv/bin/python bench/stall_bench.py [--instances 20000] [--batch 1000] [--quick]

20,000 C-STOREs on loopback through the router's sender (`dicom_send.send`, apps/routing/dicom_send.py) as
the router's deliveries make them: two senders at once (a destination's default `max_associations`), each
taking a batch (one delivery: one association) after another from a shared queue; what a batch did not
deliver goes back on the queue, as a retry. Files are 100 small CT instances (39 KB, made as the tests
make them) sent over and over. The destination is dcmtk's storescp (`+xa --ignore`, TCP_NODELAY=1): with
`--fork` (one process per association, as a PACS serves several) and without (one association at a time:
our second association's request waits, unanswered, until the first ends).

Each storescp mode runs with the router's sender as it is, then with its reactor patch disabled (pynetdicom
3.0.4's own association loop, which can take a C-STORE response that send_c_store waits for: it then waits
for its DIMSE timeout), and without --fork once more without learning (below). Counted per run:
- C-STOREs, DIMSE timeouts (a response that never came), the longest wait for one C-STORE's answer, and
  how many waited longer than 2 s, from pynetdicom's send_c_store timed around each call;
- association requests left unanswered past the connect timeout, split as the router splits them
  (apps/routing/services.py `_busy`): *busy* when the destination took the TCP connection while another
  association of ours to it was open, else *pause* (the router marks the destination down and its
  deliveries wait for the health check); and how many the classification before issue 14 (every
  association failure is down) would have paused;
- as the router learns (`busy_limit`): after a busy answer the senders hold no more associations at once
  than the destination served then. "no learning" keeps two, to show what that saves.

The connect timeout (1 s) is far shorter than a batch's send (1,000 instances: seconds), so that a serial
destination leaves the second request waiting past it, the case that paused destinations. DIMSE timeout
5 s (the router's default is 30 s: a lost response costs that much there).

Exits 1 if a run of the router's sender as it is had a DIMSE timeout, an answer wait over 2 s, or a pause.
Results go to bench/results/stall.json (stall-quick.json with --quick).
"""

import argparse
import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from common import (
    RESULTS,
    StoreSCP,
    code_version,
    machine_info,
    run_main,
    scratch,
    settle,
    synthetic_study,
    wipe,
    write_results,
)
from pydicom import dcmread
from pynetdicom.association import Association

from apps.routing import dicom_send

SENDERS = 2
LONGEST_ANSWER = 2.0  # seconds: any C-STORE answer slower than this is a stall
POOL = 100  # distinct files, sent over and over


@dataclass
class Gate:
    """The router's claim on a destination: at most `limit` associations at once (`max_associations`);
    a busy answer lowers it to what the destination was serving (`busy_limit`) when `learn` is on."""

    limit: int
    learn: bool
    open: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self.cond:
            self.cond.wait_for(lambda: self.open < self.limit)
            self.open += 1
        try:
            yield
        finally:
            with self.cond:
                self.open -= 1
                self.cond.notify_all()

    def busy(self) -> bool:
        """Called inside a slot whose association request went unanswered: True if busy, not down."""
        with self.cond:
            serving = self.open - 1  # the caller's own slot is open while it reports, as its delivery is
            if serving >= 1 and self.learn:
                self.limit = min(self.limit, serving)
            return serving >= 1


@dataclass
class Tally:
    c_stores: int = 0
    delivered: int = 0
    dimse_timeouts: int = 0
    associations: int = 0
    unanswered_requests: int = 0  # connected, no association answer within the connect timeout
    busy: int = 0
    pauses: int = 0
    pauses_before_issue_14: int = 0
    longest_answer_wait: float = 0.0
    answers_over_2s: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lock"}
        values["longest_answer_wait"] = round(self.longest_answer_wait, 4)
        values["seconds"] = round(self.seconds, 2)
        return values


@contextlib.contextmanager
def answer_waits(waits: list[float]) -> Iterator[None]:
    """Time every send_c_store (request sent until its answer, or the DIMSE timeout): measuring only."""
    original = Association.send_c_store

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            waits.append(time.perf_counter() - started)

    Association.send_c_store = timed
    try:
        yield
    finally:
        Association.send_c_store = original


@contextlib.contextmanager
def reactor_patch(enabled: bool) -> Iterator[None]:
    """The sender's reactor patch as it is, or disabled (pynetdicom's own association loop)."""
    original = dicom_send._reactor_reads_nothing
    if not enabled:
        dicom_send._reactor_reads_nothing = lambda assoc: None
    try:
        yield
    finally:
        dicom_send._reactor_reads_nothing = original


def make_files(folder: Path) -> list[dicom_send.File]:
    _, paths = synthetic_study(folder, count=POOL)
    ds = dcmread(paths[0], stop_before_pixels=True)
    return [dicom_send.File(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), p) for p in paths]


def batches_of(files: list[dicom_send.File], *, instances: int, batch: int) -> queue.Queue:
    work: queue.Queue = queue.Queue()
    for start in range(0, instances, batch):
        work.put([files[i % len(files)] for i in range(start, min(start + batch, instances))])
    return work


def one_batch(target: dicom_send.Target, batch: list, gate: Gate, tally: Tally) -> list:
    """Send one batch as one delivery; returns what it did not deliver."""
    with gate.slot():
        results = dicom_send.send(target, batch)
        failed = results[0] if results and all(r.unreachable for r in results) else None
        busy = failed is not None and failed.connected and gate.busy()
    with tally.lock:
        tally.associations += 1
        tally.dimse_timeouts += sum("no response" in r.error for r in results)
        if failed is not None:
            tally.unanswered_requests += failed.connected
            tally.busy += busy
            tally.pauses += not busy
            tally.pauses_before_issue_14 += 1
    return [f for f, r in zip(batch, results, strict=True) if r.kind != dicom_send.DELIVERED]


def sender(target: dicom_send.Target, work: queue.Queue, gate: Gate, tally: Tally, instances: int) -> None:
    while True:
        with tally.lock:
            if tally.delivered >= instances:
                return
        try:
            batch = work.get(timeout=0.05)
        except queue.Empty:
            continue
        missing = one_batch(target, batch, gate, tally)
        if missing:
            work.put(missing)  # a retry, as the router's delivery would make
        with tally.lock:
            tally.delivered += len(batch) - len(missing)


def one_run(files, folder: Path, *, fork: bool, fix: bool, learn: bool, args) -> Tally:
    (folder / "logs").mkdir(parents=True)
    receiver = StoreSCP(folder / "dest", folder / "logs", fork=fork, options=("--ignore",), ae_title="DEST")
    target = dicom_send.Target(
        "DEST",
        "127.0.0.1",
        receiver.port,
        "ROUTER",
        connect_timeout=args.connect_timeout,
        dimse_timeout=args.dimse_timeout,
    )
    work = batches_of(files, instances=args.instances, batch=args.batch)
    gate, tally, waits = Gate(limit=SENDERS, learn=learn), Tally(), []
    settle()
    try:
        with answer_waits(waits), reactor_patch(fix):
            started = time.perf_counter()
            threads = [
                threading.Thread(target=sender, args=(target, work, gate, tally, args.instances))
                for _ in range(SENDERS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            tally.seconds = time.perf_counter() - started
    finally:
        receiver.stop()
    tally.c_stores = len(waits)
    tally.longest_answer_wait = max(waits, default=0.0)
    tally.answers_over_2s = sum(w > LONGEST_ANSWER for w in waits)
    return tally


def stalled(tally: Tally) -> bool:
    return bool(tally.dimse_timeouts or tally.answers_over_2s or tally.pauses)


RUNS = (  # (name, storescp --fork, reactor patch, learning)
    ("fork", True, True, True),
    ("fork, fix disabled", True, False, True),
    ("no fork", False, True, True),
    ("no fork, no learning", False, True, False),
    ("no fork, fix disabled", False, False, True),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=None, help="C-STOREs per run (20,000; 2,000 with --quick)")
    parser.add_argument("--batch", type=int, default=1000, help="instances per delivery (one association)")
    parser.add_argument("--connect-timeout", type=float, default=1, help="the senders' connect (ACSE) timeout")
    parser.add_argument("--dimse-timeout", type=float, default=5, help="the senders' DIMSE timeout")
    parser.add_argument("--quick", action="store_true", help="2,000 C-STOREs per run")
    parser.add_argument("--output", type=Path, default=None, help="the results file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, data) after the run")
    args = parser.parse_args()
    args.instances = args.instances or (2000 if args.quick else 20000)
    output = args.output or RESULTS / ("stall-quick.json" if args.quick else "stall.json")

    work = scratch("stall-bench-")
    (work / "logs").mkdir()
    result: dict = {
        "benchmark": "stall",
        "machine": machine_info(),
        "parameters": {
            **{k: v for k, v in vars(args).items() if k not in ("output", "keep")},
            "senders": SENDERS,
            "files": f"{POOL} CT_small instances, sent over and over",
            "destination": "dcmtk storescp +xa --ignore, TCP_NODELAY=1",
        },
        "runs": {},
    }
    status = 0
    try:
        files = make_files(work / "data")
        for name, fork, fix, learn in RUNS:
            print(f"{name}: {args.instances} C-STOREs", flush=True)
            tally = one_run(
                files, work / name.replace(" ", "-").replace(",", ""), fork=fork, fix=fix, learn=learn, args=args
            )
            result["runs"][name] = tally.as_dict() | {"stalled": stalled(tally)}
            print(f"  {result['runs'][name]}", flush=True)
            if fix and learn and stalled(tally):
                status = 1
    finally:
        if not args.keep:
            wipe(work)
    result["code"] = code_version()
    write_results(output, result)
    return status


if __name__ == "__main__":
    run_main(main)
