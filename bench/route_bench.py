"""Routing benchmark, end to end: storescu -> router -> destination, against an auto-forwarding Orthanc.

Run: .venv/bin/python bench/route_bench.py [--runs 3] [--quick]

The destination is dcmtk's storescp (`storescp +xa -od DIR`), the same for both. Timed from the start of
storescu's send (one association, every file) until the last instance has arrived at the destination,
counting the files in its folder every 20 ms. Data: 1,000 small CT instances in 50 studies, then one
200-slice 512x512 16-bit CT study (~105 MB). Every run starts everything fresh, on empty storage:

- router: the Procfile's `scp`, `worker`, `worker-deliver` and `worker-stat` on a fresh copy of a
  migrated PostgreSQL database and Redis, configured by `importconfig` with the destination and one rule
  without criteria (it matches every study). Each study goes through persist, classify, QC, route and
  delivery once its association has ended, with production's concurrency defaults (2 per worker role).
- orthanc: Orthanc with its own configuration and a Lua script forwarding every stored instance
  (OnStoredInstance + SendToModality), Orthanc's usual way of auto-routing.

Also measured, as a reference: the router's sender alone (apps/routing/dicom_send.py, pynetdicom, one
association, in a process of its own: bench/send_files.py) sending the data set's files from disk to a
fresh storescp: the router's delivery with nothing else running.

And the ceiling of forwarding while a study arrives: the router's SCP receiving the data set while the
router's sender, in a process of its own, sends the same files (already on disk) to a fresh storescp, both
started together and timed until both are done and every file is at the destination. No pipeline, no
wait for an instance to arrive before it is sent: the least time any design that forwards each instance
as it is stored could take on this machine, with the router's receiving and sending code.

Goal (issue 8): the router at least as fast as Orthanc (Orthanc's time / the router's >= 1).
Results go to bench/results/route.json (route-quick.json with --quick).

Forwarding on receipt (issue 20): `--modes on_receipt,after_qc` measures the router once per forward mode
of the catch-all rule (`forward_mode: on_receipt`: each instance is streamed to the destination while the
association is still open), beside Orthanc; `--destinations fork,serial` repeats everything against a
storescp with `--fork` (a process per association) and one without (one association at a time, in its own
process). The goal is then the on_receipt router's (Orthanc's time / the router's >= 1 for each data set
and destination); after_qc is reported beside it. `--no-references` skips the sender-alone and ceiling
runs. `make bench` runs it so into bench/results/route-on-receipt.json.
"""

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    DESTINATION_AE,
    RESULTS,
    DataSet,
    Orthanc,
    Receiver,
    Router,
    RouterDatabase,
    Series,
    StoreSCP,
    common_arguments,
    free_port,
    import_config,
    machine_info,
    make_datasets,
    redis_flush,
    router_env,
    run_main,
    scratch,
    settle,
    storescu_checked,
    wait_for_count,
    wipe,
    workspace,
    write_results,
)

GOAL_OVER_ORTHANC = 1.0
WORKER_ROLES = ("worker", "worker-deliver", "worker-stat")
POLL = 0.02  # seconds between two counts of the destination's files

MODES = ("after_qc", "on_receipt")  # the catch-all rule's forward_mode
DESTINATIONS = ("fork", "serial")  # storescp with --fork, or without (one association at a time)

CONFIG = """
destinations:
  - {name: destination, ae_title: %(ae)s, host: 127.0.0.1, port: %(port)d}
rules:
  - {name: everything, priority: 100, destinations: [destination], forward_mode: %(mode)s}
"""


def configure(env: dict, *, port: int, folder: Path, mode: str = "after_qc") -> None:
    """Import the destination and the catch-all rule (in forward mode `mode`), as an operator would."""
    import_config(env, CONFIG % {"ae": DESTINATION_AE, "port": port, "mode": mode}, folder / f"route-{mode}.yaml")


def system_name(system: str, mode: str, modes: tuple[str, ...]) -> str:
    """`router` when one forward mode is measured (as before issue 20), else `router-<mode>`."""
    return system if system != "router" or len(modes) == 1 and mode == "after_qc" else f"router-{mode}"


@dataclass
class Run:
    arrived: float  # seconds from the start of the send until the last instance is at the destination
    sent: float  # seconds storescu took
    idle: float  # the CPUs' idle fraction just before sending
    incidents: list[str]  # the router's warnings and errors on the way (stalls, retries), if any


def incidents(logs: Path) -> list[str]:
    """The WARNING and ERROR lines the router's processes logged during the run (each run has its logs)."""
    found = []
    for role in ("scp", *WORKER_ROLES, "beat"):
        path = logs / f"{role}.log"
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()
            found += [f"{role}: {line[:300]}" for line in lines if re.search(r" (WARNING|ERROR) ", line)]
    return found


def one_run(
    name: str,
    data: DataSet,
    work: Path,
    *,
    db: RouterDatabase,
    broker: str,
    dest_port: int,
    timeout: float,
    mode: str = "after_qc",
    fork: bool = True,
) -> Run:
    """Start the destination and `name` fresh, send, wait until everything arrived at the destination."""
    folder = work / f"{name}-{data.name}"
    logs = work / f"logs-{name}-{mode}-{data.name}-{time.monotonic_ns()}"
    logs.mkdir()
    destination = StoreSCP(folder / "destination", logs, ae_title=DESTINATION_AE, port=dest_port, fork=fork)
    system: Receiver | None = None
    try:
        if name == "router":
            db.fresh()
            redis_flush(broker)
            env = router_env(database_url_=db.url, broker_url=broker, folder=folder)
            configure(env, port=dest_port, folder=folder, mode=mode)
            system = Router(env, logs, db=db, workers=WORKER_ROLES, beat=True)
        else:
            system = Orthanc(folder / "orthanc", logs, forward_to=(DESTINATION_AE, dest_port))
        quiet = settle()
        started = time.perf_counter()
        sent = storescu_checked(system.port, data, called=system.ae_title)
        arrived = wait_for_count(destination, data.count, timeout=timeout, interval=POLL) - started
        time.sleep(0.5)
        if destination.count() != data.count:
            raise RuntimeError(f"{destination.count()} files at the destination, {data.count} sent")
        return Run(arrived, sent, quiet, incidents(logs) if name == "router" else [])
    finally:
        if system is not None:
            system.stop()
        destination.stop()
        wipe(folder)


class Sender:
    """The router's sender in a process of its own (bench/send_files.py), its files' headers already read:
    `go()` starts the send, `done()` waits for it and returns the seconds it took."""

    def __init__(self, data: DataSet, port: int) -> None:
        args = [sys.executable, str(Path(__file__).parent / "send_files.py"), str(port), DESTINATION_AE]
        self.process = subprocess.Popen(
            [*args, *map(str, data.paths)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the sender did not start")

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def done(self) -> float:
        line = self.process.stdout.readline().strip()
        if self.process.wait(300) != 0 or not line.startswith("sent "):
            raise RuntimeError(f"the sender failed to deliver every file ({line!r})")
        return float(line.split()[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def sender_alone(data: DataSet, work: Path) -> float:
    """Seconds the router's sender takes to send the data set's files to a fresh storescp, one association."""
    folder = work / f"sender-{data.name}"
    destination = StoreSCP(folder / "destination", work / "logs", ae_title=DESTINATION_AE, fork=True)
    sender = None
    try:
        sender = Sender(data, destination.port)
        settle()
        sender.go()
        elapsed = sender.done()
        wait_for_count(destination, data.count, timeout=60, interval=POLL)
        return elapsed
    finally:
        if sender is not None:
            sender.stop()
        destination.stop()
        wipe(folder)


def overlap_ceiling(data: DataSet, work: Path, *, db: RouterDatabase, broker: str) -> float:
    """Seconds for the router's SCP to receive the data set while its sender sends the same files: both
    at once, until both are done and the destination holds every file (see the module's docstring)."""
    folder = work / f"ceiling-{data.name}"
    logs = work / "logs"
    db.fresh()
    redis_flush(broker)
    router = Router(router_env(database_url_=db.url, broker_url=broker, folder=folder), logs, db=db)
    destination = StoreSCP(folder / "destination", logs, ae_title=DESTINATION_AE, fork=True)
    sender = None
    try:
        sender = Sender(data, destination.port)
        settle()
        started = time.perf_counter()
        sender.go()
        storescu_checked(router.port, data, called=router.ae_title)
        sender.done()
        wait_for_count(destination, data.count, timeout=60, interval=POLL)
        elapsed = time.perf_counter() - started
        if router.count() != data.count:
            raise RuntimeError(f"the router holds {router.count()} of {data.count} instances")
        return elapsed
    finally:
        if sender is not None:
            sender.stop()
        router.stop()
        destination.stop()
        wipe(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--timeout", type=float, default=600, help="longest wait for the last instance, seconds")
    parser.add_argument("--modes", default="after_qc", help="the rule's forward modes measured: after_qc,on_receipt")
    parser.add_argument("--destinations", default="fork", help="storescp destinations: fork (--fork), serial, both")
    parser.add_argument("--no-references", action="store_true", help="skip the sender-alone and ceiling runs")
    parser.add_argument("--datasets", default="small,ct", help="the data sets measured: small,ct")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    modes = tuple(m for m in args.modes.split(",") if m)
    dests = tuple(d for d in args.destinations.split(",") if d)
    if not set(modes) <= set(MODES) or not set(dests) <= set(DESTINATIONS):
        parser.error(f"--modes from {MODES}, --destinations from {DESTINATIONS}")
    default_name = "route-on-receipt" if "on_receipt" in modes else "route"
    output = args.output or RESULTS / (f"{default_name}-quick.json" if args.quick else f"{default_name}.json")
    # (label, system, forward mode): the router once per mode, then Orthanc.
    systems = [(system_name("router", m, modes), "router", m) for m in modes] + [("orthanc", "orthanc", "")]
    goal_system = systems[[m for _, _, m in systems].index("on_receipt")][0] if "on_receipt" in modes else "router"

    work = scratch("route-bench-")
    (work / "logs").mkdir()
    db = RouterDatabase(args.postgres, work / "logs", name=args.database)
    dest_port = free_port()  # one destination port for the whole benchmark: it is in the router's config
    print(f"scratch folder {work}; building data sets", flush=True)
    datasets = [d for d in make_datasets(work / "data", quick=args.quick) if d.name in args.datasets.split(",")]
    result: dict = {
        "benchmark": "route",
        "machine": machine_info(args.postgres),
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "broker": args.broker,
            "sender": "storescu, 1 association",
            "destination": {"fork": "dcmtk storescp +xa --fork", "serial": "dcmtk storescp +xa"},
            "destinations_measured": list(dests),
            "forward_modes_measured": list(modes),
            "router_processes": ["scp", *WORKER_ROLES, "beat"],
            "poll_seconds": POLL,
        },
        "datasets": {d.name: d.describe() for d in datasets},
    }

    def key(data: DataSet, dest: str) -> str:
        return data.name if dests == ("fork",) else f"{data.name}_{dest}"

    cases = [(data, dest) for data in datasets for dest in dests]
    runs_of: dict[tuple[str, str], list[Run]] = {(key(d, t), label): [] for d, t in cases for label, _, _ in systems}
    alone: dict[str, Series] = {key(d, t): Series() for d, t in cases}
    ceiling: dict[str, Series] = {key(d, t): Series() for d, t in cases}
    with workspace(work, db, args, logs=f"{work / 'logs'}*"):
        env = router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl")
        db.create_template(env)  # each router run imports its configuration (the rule's mode) into its copy
        for data, dest in cases:
            case = key(data, dest)
            for run in range(runs):
                order = systems[run % len(systems) :] + systems[: run % len(systems)]  # rotate who goes first
                for label, name, mode in order:
                    done = one_run(
                        name,
                        data,
                        work,
                        db=db,
                        broker=args.broker,
                        dest_port=dest_port,
                        timeout=args.timeout,
                        mode=mode or "after_qc",
                        fork=dest == "fork",
                    )
                    runs_of[case, label].append(done)
                    print(
                        f"{case:12} run {run + 1}/{runs} {label:18} all arrived after {done.arrived:7.2f} s "
                        f"(storescu done after {done.sent:6.2f} s; CPUs {done.idle:.0%} idle before)"
                        + (f"; {len(done.incidents)} warnings/errors logged" if done.incidents else ""),
                        flush=True,
                    )
                if args.no_references:
                    continue
                alone[case].values.append(sender_alone(data, work))
                print(f"{case:12} run {run + 1}/{runs} the router's sender alone {alone[case].values[-1]:7.2f} s")
                ceiling[case].values.append(overlap_ceiling(data, work, db=db, broker=args.broker))
                print(
                    f"{case:12} run {run + 1}/{runs} receipt and sending at once (the ceiling) "
                    f"{ceiling[case].values[-1]:7.2f} s",
                    flush=True,
                )

    figures: dict = {}
    all_met = True
    print()
    print(f"{'case':14}{'system':20}{'all arrived s':>15}{'storescu s':>12}")
    for data, dest in cases:
        case = key(data, dest)
        per = {}
        medians = {}
        for label, name, _ in systems:
            done = runs_of[case, label]
            total, send = Series([r.arrived for r in done]), Series([r.sent for r in done])
            medians[label] = total.median
            per[label] = {
                "seconds_until_all_arrived": [round(s, 3) for s in total.values],
                "median_seconds_until_all_arrived": round(total.median, 3),
                "seconds_storescu": [round(s, 3) for s in send.values],
                "median_seconds_storescu": round(send.median, 3),
                "median_instances_per_second": round(data.count / total.median, 2),
                "median_mb_per_second": round(data.megabytes / total.median, 2),
                "cpu_idle_before": [round(r.idle, 2) for r in done],
            }
            if name == "router":
                per[label]["warnings_and_errors_per_run"] = [r.incidents for r in done]
            print(f"{case:14}{label:20}{total.median:15.2f}{send.median:12.2f}")
        orthanc = medians["orthanc"]
        ratios = {label: round(orthanc / medians[label], 3) for label, name, _ in systems if name == "router"}
        ratio = orthanc / medians[goal_system]
        met = ratio >= GOAL_OVER_ORTHANC
        all_met &= met
        figures[case] = {
            "data": data.name,
            "destination": dest,
            "systems": per,
            "ratio_orthanc_time_over_router_time": round(ratio, 3),
            "ratio_measured_for": goal_system,
            "ratios_orthanc_time_over_each_router_mode": ratios,
            "goal_met": met,
        }
        if not args.no_references:
            figures[case] |= {
                "router_sender_alone_seconds": [round(s, 3) for s in alone[case].values],
                "median_router_sender_alone_seconds": round(alone[case].median, 3),
                "ratio_orthanc_time_over_router_sender_alone": round(orthanc / alone[case].median, 3),
                "receipt_and_sending_at_once_seconds": [round(s, 3) for s in ceiling[case].values],
                "median_receipt_and_sending_at_once_seconds": round(ceiling[case].median, 3),
                "ratio_orthanc_time_over_receipt_and_sending_at_once": round(orthanc / ceiling[case].median, 3),
            }
        print(
            f"{case}: {goal_system} {ratio:.2f}x Orthanc's speed (Orthanc's time / ours; goal >= "
            f"{GOAL_OVER_ORTHANC:g}: {'met' if met else 'NOT met'}); every mode: {ratios}"
            + (
                ""
                if args.no_references
                else f"; the router's sender alone {alone[case].median:.2f} s ({orthanc / alone[case].median:.2f}x);"
                f" receipt and sending at once (the ceiling) {ceiling[case].median:.2f} s "
                f"({orthanc / ceiling[case].median:.2f}x)"
            )
        )
    result["results"] = figures
    result["goal"] = {"orthanc_time_over_router_time_at_least": GOAL_OVER_ORTHANC, "for": goal_system, "met": all_met}
    write_results(output, result)
    return 0 if all_met else 1


if __name__ == "__main__":
    run_main(main)
