"""Hostile-load benchmark: a modality's throughput to our SCP while another host attacks it, as a ratio to
the same modality's throughput when nobody does (issue 23).

Run: .venv/bin/python bench/hostile_bench.py [--runs 3] [--quick]

One `manage.py runscp` process (the Procfile's scp command, no worker: only receipt is measured) on a
fresh copy of a migrated PostgreSQL database, with its default limits. dcmtk's storescu sends each data set
over one association from 127.0.0.1, during each attack from 127.0.0.2:
- quiet: no attack (the reference);
- idle: 200 connections that never send a byte, held open (the attacker reconnects none);
- trickle: 16 connections sending an A-ASSOCIATE-RQ a byte every 0.1 s, reconnecting when dropped;
- flood: short associations (associate, release) in a loop, as fast as the attacker can, under `nice`
  (an attacker's CPU is another machine's; this one has two cores).
The figure is throughput under attack over quiet throughput (1.0: the attack costs nothing), medians of
`--runs` runs. Goal: at least 0.5 under every attack. Results go to bench/results/hostile.json
(hostile-quick.json with --quick). No peer is attacked beside us: dcmtk's storescp serves one association at
a time and Orthanc four, so 200 idle connections stop both outright (the issue's premise).
"""

import argparse
import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import (
    RESULTS,
    ROOT,
    Process,
    RouterDatabase,
    Series,
    code_version,
    common_arguments,
    free_port,
    machine_info,
    make_datasets,
    procfile,
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

from tests.hostile import associate_rq

ATTACKER = "127.0.0.2"
GOAL = 0.5
ATTACKS = ("quiet", "idle", "trickle", "flood")


def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((ATTACKER, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class Attack:
    """One attack on `port` from the attacker's address, from `start()` until `stop()`."""

    def __init__(self, kind: str, port: int, work: Path) -> None:
        self.kind, self.port, self.work = kind, port, work
        self.done = threading.Event()
        self.held: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.flood: subprocess.Popen | None = None

    def start(self) -> None:
        if self.kind == "idle":
            for _ in range(200):
                with contextlib.suppress(OSError):  # refused at once: the door at work
                    self.held.append(connect(self.port))
        elif self.kind == "trickle":
            self.threads = [threading.Thread(target=self._trickle, daemon=True) for _ in range(16)]
            for thread in self.threads:
                thread.start()
        elif self.kind == "flood":
            stop = self.work / "stop-flood"
            stop.unlink(missing_ok=True)
            args = [sys.executable, "-m", "tests.hostile.flood", str(self.port), ATTACKER, "1", str(stop)]
            self.flood = subprocess.Popen(["nice", "-n", "19", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)  # under way before the modality starts

    def _trickle(self) -> None:
        request = associate_rq()
        while not self.done.is_set():
            try:
                with connect(self.port) as sock:
                    for byte in request:
                        if self.done.wait(0.1):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:
                continue

    def stop(self) -> str:
        self.done.set()
        for sock in self.held:
            sock.close()
        for thread in self.threads:
            thread.join(timeout=10)
        if self.flood is not None:
            (self.work / "stop-flood").touch()
            output, _ = self.flood.communicate(timeout=120)
            done, refused = output.split()
            return f"{done} associations, {refused} refused"
        return ""


def one_run(kind: str, data, work: Path, *, db: RouterDatabase, broker: str) -> tuple[float, str]:
    folder = work / f"run-{kind}"
    wipe(folder)
    folder.mkdir(parents=True)
    env = router_env(database_url_=db.fresh(), broker_url=broker, folder=folder)
    port = free_port()
    scp = Process(
        "scp", procfile.command("scp", "--host", "127.0.0.1", "--port", str(port)), env=env, log_dir=work / "logs"
    )

    class Target:
        ae_title, name = "ROUTER", "router"

        def count(self) -> int:
            return db.count("SELECT count(*) FROM studies_receivedinstance")

    try:
        scp.wait_for_port(port)
        settle()
        attack = Attack(kind, port, work)
        attack.start()
        try:
            elapsed = storescu_checked(port, data, called="ROUTER")
        finally:
            note = attack.stop()
        wait_for_count(Target(), data.count, timeout=60)
        return elapsed, note
    finally:
        scp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    output = args.output or RESULTS / ("hostile-quick.json" if args.quick else "hostile.json")
    work = scratch("hostile-bench-")
    (work / "logs").mkdir()
    db = RouterDatabase(args.postgres, work / "logs", name=args.database)
    datasets = make_datasets(work / "data", quick=args.quick)
    seconds = {(d.name, a): Series() for d in datasets for a in ATTACKS}
    result: dict = {
        "benchmark": "hostile",
        "machine": machine_info(args.postgres),
        "code": code_version(),
        "parameters": {"runs": runs, "quick": args.quick, "attacker": ATTACKER, "sender": "storescu -R"},
        "datasets": {d.name: {**d.describe(), "unit": d.unit} for d in datasets},
    }
    with workspace(work, db, args, logs=f"{work / 'logs'}*"):
        db.create_template(router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl"))
        for data in datasets:
            for run in range(runs):
                for kind in ATTACKS:
                    elapsed, note = one_run(kind, data, work, db=db, broker=args.broker)
                    seconds[data.name, kind].values.append(elapsed)
                    print(
                        f"{data.name:6} run {run + 1}/{runs} {kind:8} {elapsed:7.2f} s "
                        f"{data.throughput(elapsed):8.1f} {data.unit} {note}",
                        flush=True,
                    )
    figures, met = {}, True
    print(f"\n{'data':8}{'attack':10}{'throughput':>12}{'/ quiet':>9}")
    for data in datasets:
        quiet = data.throughput(seconds[data.name, "quiet"].median)
        for kind in ATTACKS:
            throughput = data.throughput(seconds[data.name, kind].median)
            ratio = throughput / quiet
            figures.setdefault(data.name, {})[kind] = {
                "throughput": round(throughput, 2),
                "unit": data.unit,
                "over_quiet": round(ratio, 3),
                "seconds": [round(s, 3) for s in seconds[data.name, kind].values],
            }
            met = met and ratio >= GOAL
            print(f"{data.name:8}{kind:10}{throughput:12.1f}{ratio:9.2f}")
    result["figures"] = figures
    result["goal"] = f"throughput under every attack >= {GOAL} x quiet"
    result["goal_met"] = met
    write_results(output, result)
    return 0 if met else 1


if __name__ == "__main__":
    run_main(main)
