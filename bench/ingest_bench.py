"""Ingest benchmark: dcmtk's storescu sending to our SCP, to Orthanc and to dcmtk's storescp.

Run: .venv/bin/python bench/ingest_bench.py [--runs 3] [--quick]

Three sends per run, each to every receiver started fresh on empty storage and checked to hold every
instance afterwards:
- small: one storescu association sends 1,000 small CT instances in 50 studies (instances/s);
- ct: one association sends one 200-slice 512x512 16-bit CT study of ~105 MB (MB/s);
- small, 4 associations: four storescu at once, each sending a quarter of the small set's studies, as
  several modalities send to one router (instances/s).

- router: `manage.py runscp` (the Procfile's scp command) with SCP_PROCESSES=2 (one per core), on a fresh
  copy of a migrated PostgreSQL database and Redis; it fsyncs each file and commits its row before
  answering success. No worker: only receipt is measured (the chains it publishes are part of the time).
- orthanc: Orthanc with its own configuration (SyncStorageArea true, its default: fsync per file; its
  default 4 DICOM threads).
- storescp: dcmtk's `storescp +xa -od DIR` (with --fork for concurrent associations: a process each),
  which writes files without fsync: a ceiling, not a peer.
- pynetdicom: bench/pynetdicom_scp.py, the least storage SCP pynetdicom allows (encoded dataset to a file,
  fsync, nothing else; one process): not a goal's peer, the floor of the library the router receives with.

Goal (issue 20, replacing issue 8's 1.2x Orthanc and 0.5x storescp, still reported): per association, the
router at least 0.9x pynetdicom's floor measured in the same run (small and CT); four associations at once
(SCP_PROCESSES=2) at least 1.5x the router's throughput over one association (small set).
`--receivers router,pynetdicom` measures only those (the issue 20 goals need no more).
Results go to bench/results/ingest.json (ingest-quick.json with --quick).
"""

import argparse
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common import (
    RESULTS,
    DataSet,
    Orthanc,
    PynetdicomSCP,
    Receiver,
    Router,
    RouterDatabase,
    Series,
    StoreSCP,
    common_arguments,
    machine_info,
    make_datasets,
    redis_flush,
    router_env,
    run_main,
    scratch,
    settle,
    storescu_checked,
    wipe,
    workspace,
    write_results,
)

GOAL_OVER_ORTHANC = 1.2  # issue 8's goals, reported
GOAL_OVER_STORESCP = 0.5
GOAL_OVER_FLOOR = 0.9  # issue 20: per association, against pynetdicom's floor
GOAL_CONCURRENT_OVER_ONE = 1.5  # issue 20: four associations (SCP_PROCESSES=2) over one
RECEIVERS = ("router", "orthanc", "storescp", "pynetdicom")
ROUTER_SCP_PROCESSES = 2  # one per core of the machine measured
CONCURRENT = 4  # associations at once in the concurrent send


@dataclass(frozen=True)
class Send:
    """A data set and how many storescu associations send it at once (each a share of its studies)."""

    data: DataSet
    associations: int = 1

    @property
    def name(self) -> str:
        return self.data.name if self.associations == 1 else f"{self.data.name}_{self.associations}_associations"

    def shares(self) -> list[DataSet]:
        studies: dict[Path, list[Path]] = {}
        for path in self.data.paths:
            studies.setdefault(path.parent, []).append(path)
        groups = [list(studies.values())[i :: self.associations] for i in range(self.associations)]
        return [DataSet(f"{self.data.name}-{i}", self.data.unit, sum(g, []), len(g)) for i, g in enumerate(groups)]


def start(name: str, folder: Path, logs: Path, *, db: RouterDatabase, broker: str, concurrent: bool) -> Receiver:
    if name == "router":
        db.fresh()
        redis_flush(broker)
        env = router_env(database_url_=db.url, broker_url=broker, folder=folder)
        return Router({**env, "SCP_PROCESSES": str(ROUTER_SCP_PROCESSES)}, logs, db=db)
    if name == "orthanc":
        return Orthanc(folder, logs)
    if name == "pynetdicom":
        return PynetdicomSCP(folder / "out", logs)
    return StoreSCP(folder / "out", logs, fork=concurrent)


def send(receiver: Receiver, what: Send) -> float:
    """storescu's wall time: one association, or several at once (until the last one ends)."""
    if what.associations == 1:
        return storescu_checked(receiver.port, what.data, called=receiver.ae_title)
    started = time.perf_counter()
    with ThreadPoolExecutor(what.associations) as pool:
        list(pool.map(lambda share: storescu_checked(receiver.port, share, called=receiver.ae_title), what.shares()))
    return time.perf_counter() - started


def one_run(
    name: str, what: Send, work: Path, *, db: RouterDatabase, broker: str, py_spy: str | None = None
) -> tuple[float, float]:
    """Start `name` fresh, send the data set, check it holds it all.

    Returns (seconds storescu took, the CPUs' idle fraction just before sending). With `py_spy`, the
    SCP is sampled while it receives, into work/profile-<data set>.txt (py-spy's raw format)."""
    data = what.data
    folder = work / f"{name}-{what.name}"
    logs = work / "logs"
    receiver = start(name, folder, logs, db=db, broker=broker, concurrent=what.associations > 1)
    spy = None
    try:
        if py_spy and isinstance(receiver, Router) and receiver.scp is not None:
            args = [py_spy, "record", "--pid", str(receiver.scp.pid), "--rate", str(PROFILE_RATE), "--threads"]
            args += ["--subprocesses"]  # the supervisor's SCP processes
            args += ["--idle", "--format", "raw", "-o", str(work / f"profile-{what.name}.txt")]
            spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # py-spy attaches
        quiet = settle()
        elapsed = send(receiver, what)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(60)
        held = receiver.count()
        if held != data.count:
            raise RuntimeError(f"{name} holds {held} of the {data.count} instances sent")
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        receiver.stop()
        wipe(folder)
    return elapsed, quiet


# Where the SCP's association thread spends its time, by the first of these frames found in a sample.
PROFILE_RATE = 200
PROFILE_PARTS = [
    ("put the file in place (fsync, rename, fsync of the folder)", ("Spool.adopt", "_fsync_dir")),
    ("commit the row (PostgreSQL insert and commit)", ("received_instance_register",)),
    ("inspect the received file (inspect_file)", ("inspect_file",)),
    ("answer and the rest of the C-STORE handling", ("StorageServiceClass.SCP",)),
    ("wait for the next message", ("",)),
]


def profile_summary(path: Path, data: DataSet, seconds: float) -> dict:
    """The association thread's samples by part, and how busy the DUL thread (PDU reading) was."""
    threads: dict[str, list[tuple[list[str], int]]] = {}  # by thread id: py-spy may drop a thread's name
    names: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        # py-spy --subprocesses puts "process ..." frames (the supervisor, then the SCP process) first.
        at = next((i for i, f in enumerate(frames) if f.startswith("thread (")), 0)
        tid = ";".join(frames[:at] + [frames[at].split(")")[0]])
        names[tid] = names.get(tid, "") + frames[at]
        threads.setdefault(tid, []).append((frames[at + 1 :], int(count)))

    def storing(tid: str) -> int:
        return sum(n for frames, n in threads[tid] if any(f.startswith("StoreSCP.on_store") for f in frames))

    association = max(threads, key=storing)
    reactor = max((t for t in threads if "run_reactor" in names[t]), key=lambda t: sum(n for _, n in threads[t]))
    parts = dict.fromkeys((name for name, _ in PROFILE_PARTS), 0)
    for frames, n in threads[association]:
        joined = ";".join(frames)
        parts[next(name for name, marks in PROFILE_PARTS if any(m in joined for m in marks))] += n
    total = sum(parts.values())
    dul = threads[reactor]
    dul_total = sum(n for _, n in dul)
    # Samples whose innermost Python frame is the reactor's wait in poll(2) (apps/ingest/reactor.py).
    dul_sleeping = sum(n for frames, n in dul if frames and "transport_event_or_wait" in frames[-1])
    return {
        "profiled_run_seconds": round(seconds, 3),
        "sampling": f"py-spy {PROFILE_RATE} Hz (slows the SCP down: shares matter, not absolute times)",
        "association_thread_share": {name: round(n / total, 3) for name, n in parts.items()},
        "association_thread_ms_per_instance": {
            name: round(n / PROFILE_RATE / data.count * 1000, 2) for name, n in parts.items()
        },
        "dul_thread_busy_share": round(1 - dul_sleeping / max(dul_total, 1), 3),
    }


def find_py_spy(given: str | None) -> str:
    for candidate in (given, shutil.which("py-spy"), "/tmp/pyspy/bin/py-spy"):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("py-spy not found: pip install --target /tmp/pyspy py-spy, or give --py-spy PATH")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="also profile one more router run with py-spy")
    parser.add_argument("--py-spy", default=None, help="py-spy's path (else PATH, then /tmp/pyspy/bin/py-spy)")
    parser.add_argument("--receivers", default=",".join(RECEIVERS), help=f"which receivers ({','.join(RECEIVERS)})")
    args = parser.parse_args()
    receivers = tuple(r for r in RECEIVERS if r in args.receivers.split(","))
    runs = args.runs or (1 if args.quick else 3)
    py_spy = find_py_spy(args.py_spy) if args.profile else None
    output = args.output or RESULTS / ("ingest-quick.json" if args.quick else "ingest.json")

    work = scratch("ingest-bench-")
    (work / "logs").mkdir()
    db = RouterDatabase(args.postgres, work / "logs", name=args.database)
    print(f"scratch folder {work}; building data sets", flush=True)
    datasets = make_datasets(work / "data", quick=args.quick)
    small = next(d for d in datasets if d.name == "small")
    sends = [Send(d) for d in datasets] + [Send(small, CONCURRENT)]
    result: dict = {
        "benchmark": "ingest",
        "machine": machine_info(args.postgres),
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "broker": args.broker,
            "sender": f"storescu: 1 association, or {CONCURRENT} at once each sending a share of the studies",
            "router_scp_processes": ROUTER_SCP_PROCESSES,
            "receivers": list(receivers),
        },
        "datasets": {d.name: {**d.describe(), "unit": d.unit} for d in datasets},
    }
    seconds = {(w.name, r): Series() for w in sends for r in receivers}
    idle = {(w.name, r): Series() for w in sends for r in receivers}
    profiles: dict[str, dict] = {}
    with workspace(work, db, args, logs=f"{work / 'logs'}*"):
        db.create_template(router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl"))
        for what in sends:
            data = what.data
            for run in range(runs):
                # Rotate the order each run, so no receiver always goes first (cold) or last.
                order = receivers[run % len(receivers) :] + receivers[: run % len(receivers)]
                for name in order:
                    elapsed, quiet = one_run(name, what, work, db=db, broker=args.broker)
                    seconds[what.name, name].values.append(elapsed)
                    idle[what.name, name].values.append(quiet)
                    print(
                        f"{what.name:22} run {run + 1}/{runs} {name:10} {elapsed:7.2f} s  "
                        f"{data.throughput(elapsed):8.1f} {data.unit}   (CPUs {quiet:.0%} idle before)",
                        flush=True,
                    )
            if py_spy:  # one more router run, sampled, not counted in the figures
                elapsed, _ = one_run("router", what, work, db=db, broker=args.broker, py_spy=py_spy)
                profiles[what.name] = profile_summary(work / f"profile-{what.name}.txt", data, elapsed)
                print(f"{what.name} profiled router run {elapsed:7.2f} s: {profiles[what.name]}", flush=True)

    figures: dict = {}
    issue8_met = issue20_met = True
    print()
    print(f"{'send':24}{'receiver':12}{'median s':>10}{'throughput':>14}")

    def throughput(what: Send, name: str) -> float | None:
        series = seconds.get((what.name, name))
        return what.data.throughput(series.median) if series and series.values else None

    for what in sends:
        data = what.data
        per = {}
        for name in receivers:
            series = seconds[what.name, name]
            per[name] = {
                "seconds": [round(s, 3) for s in series.values],
                "median_seconds": round(series.median, 3),
                "cpu_idle_before": [round(q, 2) for q in idle[what.name, name].values],
                f"median_{data.unit.replace('/', '_per_')}": round(data.throughput(series.median), 2),
            }
            print(f"{what.name:24}{name:12}{series.median:10.2f}{data.throughput(series.median):10.1f} {data.unit}")
        ours = throughput(what, "router")
        figures[what.name] = {"unit": data.unit, "associations": what.associations, "receivers": per}
        line = [what.name + ":"]
        for peer, goal in (("orthanc", GOAL_OVER_ORTHANC), ("storescp", GOAL_OVER_STORESCP)):
            theirs = throughput(what, peer)
            if ours and theirs:
                ratio = ours / theirs
                figures[what.name][f"ratio_router_over_{peer}"] = round(ratio, 3)
                issue8_met &= ratio >= goal
                line.append(f"router/{peer} {ratio:.2f}x (issue 8 goal >= {goal}x)")
        floor = throughput(what, "pynetdicom")
        if ours and floor:
            ratio = ours / floor
            figures[what.name]["ratio_router_over_pynetdicom_floor"] = round(ratio, 3)
            if what.associations == 1:
                met = ratio >= GOAL_OVER_FLOOR
                figures[what.name]["goal_over_floor_met"] = met
                issue20_met &= met
                line.append(f"router/floor {ratio:.2f}x (goal >= {GOAL_OVER_FLOOR}x: {'met' if met else 'NOT met'})")
            else:
                line.append(f"router/floor {ratio:.2f}x")
            if throughput(what, "orthanc"):
                figures[what.name]["ratio_pynetdicom_floor_over_orthanc"] = round(
                    floor / throughput(what, "orthanc"), 3
                )
        if what.associations > 1 and ours:
            one = throughput(Send(what.data), "router")
            if one:
                ratio = ours / one
                met = ratio >= GOAL_CONCURRENT_OVER_ONE
                issue20_met &= met
                figures[what.name]["ratio_router_over_router_one_association"] = round(ratio, 3)
                figures[what.name]["goal_over_one_association_met"] = met
                line.append(
                    f"router {what.associations} associations / 1: {ratio:.2f}x "
                    f"(goal >= {GOAL_CONCURRENT_OVER_ONE}x: {'met' if met else 'NOT met'})"
                )
        print(" ".join(line))
    result["results"] = figures
    if profiles:
        result["router_profile"] = profiles
    result["goal"] = {
        "issue_20": {
            "router_over_pynetdicom_floor_per_association_at_least": GOAL_OVER_FLOOR,
            "four_associations_over_one_at_least": GOAL_CONCURRENT_OVER_ONE,
            "met": issue20_met,
        },
        "issue_8_reported": {
            "router_over_orthanc_at_least": GOAL_OVER_ORTHANC,
            "router_over_storescp_at_least": GOAL_OVER_STORESCP,
            "met": issue8_met if {"orthanc", "storescp"} <= set(receivers) else None,
        },
        "met": issue20_met,
    }
    write_results(output, result)
    return 0 if issue20_met else 1


if __name__ == "__main__":
    run_main(main)
