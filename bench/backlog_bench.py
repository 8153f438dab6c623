"""Backlog benchmark: a STAT study sent behind 20,000 queued routine instances.

Run: .venv/bin/python bench/backlog_bench.py [--runs 1] [--quick]

With only the router's SCP running (the Procfile's `scp`; no worker, no Beat), storescu sends 20,000
routine instances (400 studies of 50 CT_small-based instances, in 4 associations of 100 studies), then
one 5-instance STAT study (RequestedProcedurePriority STAT, CT HEAD) in a fifth association. The SCP
registers each study at the end of its association and publishes its chain, so 400 routine chains wait
in Redis' `ingest` queue and the STAT chain in `stat` (checked). Then `worker`, `worker-deliver`,
`worker-stat` and `beat` are started, and the clock runs from their start (their boot included) until:

- the STAT study is delivered (its 5 files in the destination's folder, dcmtk `storescp +xa --fork`),
  assigned and notified (stage `notified` and the neuroradiologist's in-app notification row);
- half of the routine studies, then all of them, are done (stage `notified` and delivered), and every
  file is at the destination: the backlog has drained.

Configuration (`importconfig`): the destination, one rule sending every study there, and a
neuroradiologist on shift around the clock, who is assigned every study (all are CT HEAD).

Goal (issue 8): the STAT study delivered, assigned and notified within 60 s of the workers' start.
The backlog's drain is the comparison: it shows what the STAT study would have waited for in arrival
order. Results go to bench/results/backlog.json (backlog-quick.json with --quick: 2,000 instances).
"""

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    DESTINATION_AE,
    READER_ON_SHIFT,
    RESULTS,
    BenchStudy,
    DataSet,
    Router,
    RouterDatabase,
    StoreSCP,
    StudyWatch,
    common_arguments,
    ct_small_studies,
    free_bytes,
    free_port,
    import_config,
    machine_info,
    redis_flush,
    router_env,
    router_incidents,
    router_roles,
    run_main,
    scratch,
    settle,
    storescu_checked,
    wipe,
    workspace,
    write_results,
)

GOAL_SECONDS = 60.0
WORKER_ROLES = ("worker", "worker-deliver", "worker-stat")
QUEUES = ("ingest", "workflow", "deliver", "notify", "stat")
STAT_INSTANCES = 5
ASSOCIATIONS = 4
POLL = 0.05  # seconds between two looks at the STAT study
PROGRESS_EVERY = 1.0  # seconds between two counts of the routine studies done
STALLED = 300.0  # seconds without a routine study or a file more: the wait ends (Beat's sweeps had their turn)

CONFIG = (
    """
destinations:
  - {name: destination, ae_title: %(ae)s, host: 127.0.0.1, port: %(port)d}
rules:
  - {name: everything, priority: 100, destinations: [destination]}
"""
    + READER_ON_SHIFT
)

# Routine studies done: notified (assigned, the reader told) and every delivery delivered.
ROUTINE_DONE = """
SELECT count(*) FROM studies_study s
WHERE s.study_instance_uid <> %s AND s.stage = 'notified'
  AND EXISTS (SELECT 1 FROM routing_delivery d WHERE d.study_id = s.id)
  AND NOT EXISTS (SELECT 1 FROM routing_delivery d WHERE d.study_id = s.id AND d.state <> 'delivered')
"""


def configure(env: dict, *, port: int, folder: Path) -> None:
    import_config(env, CONFIG % {"ae": DESTINATION_AE, "port": port}, folder / "backlog.yaml")


def queue_lengths(broker: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(broker)
    try:
        return {name: client.llen(name) for name in QUEUES}
    finally:
        client.close()


@dataclass
class Run:
    send_seconds: list[float]  # storescu's wall time per association, routine ones then the STAT one
    queued: dict  # the broker's queues once everything was received, before the workers start
    idle: float
    workers_ready: dict = field(default_factory=dict)  # seconds from their start until each logged ready
    stat_delivered: float | None = None
    stat_notified: float | None = None
    at_stat_done: dict = field(default_factory=dict)  # the backlog when the STAT study was done
    half_drained: float | None = None
    drained: float | None = None
    progress: list = field(default_factory=list)  # (seconds, routine studies done, files at the destination)
    stat_timeline: dict = field(default_factory=dict)
    incidents: list = field(default_factory=list)
    stopped: str = ""  # why the wait ended before the backlog drained, if it did

    @property
    def stat_done(self) -> float | None:
        if self.stat_delivered is None or self.stat_notified is None:
            return None
        return max(self.stat_delivered, self.stat_notified)


def one_run(
    routine: list[BenchStudy],
    stat: BenchStudy,
    work: Path,
    n: int,
    *,
    db: RouterDatabase,
    broker: str,
    dest_port: int,
    timeout: float,
) -> Run:
    folder = work / f"run{n}"
    logs = work / f"logs-run{n}"
    logs.mkdir()
    db.fresh()
    redis_flush(broker)
    env = router_env(database_url_=db.url, broker_url=broker, folder=folder)
    destination = StoreSCP(folder / "destination", logs, ae_title=DESTINATION_AE, port=dest_port, fork=True)
    scp = Router(env, logs, db=db)  # the SCP alone
    workers = []
    watch = StudyWatch(db.url)
    try:
        sends = []
        per = -(-len(routine) // ASSOCIATIONS)
        for k in range(0, len(routine), per):
            group = routine[k : k + per]
            data = DataSet("routine", "instances/s", [p for s in group for p in s.paths], len(group))
            sends.append(storescu_checked(scp.port, data, called=scp.ae_title))
            print(f"  routine association {len(sends)}: {data.count} instances in {sends[-1]:.1f} s", flush=True)
        sends.append(storescu_checked(scp.port, stat.dataset("stat"), called=scp.ae_title))
        routine_files = sum(len(s.paths) for s in routine)
        total_files = routine_files + len(stat.paths)

        def queued_as_expected() -> dict | None:
            lengths = queue_lengths(broker)
            return lengths if (lengths["ingest"], lengths["stat"]) == (len(routine), 1) else None

        deadline = time.monotonic() + 60
        while (queued := queued_as_expected()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker's queues never held every chain: {queue_lengths(broker)}")
            time.sleep(0.2)
        held = scp.count()
        if held != total_files:
            raise RuntimeError(f"the router received {held} instances of {total_files}")
        print(f"  queued: {queued}; starting the workers and Beat", flush=True)
        quiet = settle(maximum=5)
        run = Run(sends, queued, quiet)

        started, started_wall = time.perf_counter(), time.time()
        workers = router_roles(env, logs, WORKER_ROLES, beat=True, wait=False)
        stat_files = [destination.folder / f"CT.{uid}" for uid in stat.sop_uids]
        half = len(routine) / 2
        next_progress = 0.0
        while True:
            now = time.perf_counter() - started
            for process in workers:
                if process.name not in run.workers_ready:
                    mark = "beat: Starting" if process.name == "beat" else "ready."
                    if mark in process.log():
                        run.workers_ready[process.name] = round(now, 3)
                    elif not process.alive():
                        raise RuntimeError(f"{process.name} exited:\n{process.log()[-3000:]}")
            if run.stat_delivered is None and all(f.exists() for f in stat_files):
                run.stat_delivered = now
            if run.stat_notified is None and watch.done(stat.uid):
                run.stat_notified = now
            if run.stat_done is not None and not run.at_stat_done:
                done = watch.scalar(ROUTINE_DONE, (stat.uid,))
                run.at_stat_done = {
                    "seconds": round(run.stat_done, 3),
                    "routine_studies_done": done,
                    "routine_studies_notified": watch.scalar(
                        "SELECT count(*) FROM studies_study WHERE stage = 'notified' AND study_instance_uid <> %s",
                        (stat.uid,),
                    ),
                    "files_at_destination": destination.count(),
                    "queues": queue_lengths(broker),
                }
                print(
                    f"  STAT study delivered, assigned and notified after {run.stat_done:.1f} s; routine studies "
                    f"done by then: {done}/{len(routine)}; files at the destination: "
                    f"{run.at_stat_done['files_at_destination']}/{total_files}; queues {run.at_stat_done['queues']}",
                    flush=True,
                )
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY
                done, files = watch.scalar(ROUTINE_DONE, (stat.uid,)), destination.count()
                run.progress.append((round(now, 1), done, files))
                if run.half_drained is None and done >= half:
                    run.half_drained = now
                    print(f"  half the routine studies done after {now:.1f} s", flush=True)
                if done == len(routine) and files >= total_files:
                    run.drained = now
                    print(f"  backlog drained after {now:.1f} s", flush=True)
                if len(run.progress) % 30 == 0:
                    print(f"  {now:6.0f} s: {done}/{len(routine)} routine studies done, {files} files", flush=True)
            if run.drained is not None and run.stat_done is not None:
                break
            if now > timeout:
                print(f"  stopped after {timeout:.0f} s (--timeout): not everything was done", flush=True)
                run.stopped = f"--timeout {timeout:g} s"
                break
            moved = [p for p in run.progress if p[1:] != run.progress[-1][1:]]
            if run.progress and now - (moved[-1][0] if moved else 0) > STALLED:
                print(f"  no progress for {STALLED:g} s: stopped", flush=True)
                run.stopped = f"no progress for {STALLED:g} s"
                break
            time.sleep(POLL)
        time.sleep(1)  # the STAT delivery's row is marked delivered just after its files arrived
        run.stat_timeline = watch.timeline(stat.uid, started_wall)
        run.incidents = router_incidents(logs)
        return run
    finally:
        watch.close()
        for process in workers:
            process.stop(timeout=60)
        scp.stop()
        destination.stop()
        wipe(folder)


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known and len(known) == len(values) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--studies", type=int, default=None, help="routine studies (400; 40 with --quick)")
    parser.add_argument("--per-study", type=int, default=50, help="instances per routine study (50)")
    parser.add_argument("--timeout", type=float, default=1800, help="longest wait for the backlog to drain, s")
    args = parser.parse_args()
    runs = args.runs or 1
    studies = args.studies or (40 if args.quick else 400)
    output = args.output or RESULTS / ("backlog-quick.json" if args.quick else "backlog.json")

    work = scratch("backlog-bench-")
    needed = 3 * studies * args.per_study * 40_000 + 2e9  # data, the router's storage, the destination; margin
    if free_bytes(work) < needed:
        wipe(work)
        sys.exit(f"not enough free disk space in {work.parent}: {needed / 1e9:.1f} GB needed")
    (work / "logs").mkdir()
    db = RouterDatabase(args.postgres, work / "logs", name=args.database)
    dest_port = free_port()
    print(f"scratch folder {work}; building {studies} routine studies of {args.per_study} instances", flush=True)
    built = time.perf_counter()
    routine = ct_small_studies(work / "data" / "routine", studies=studies, per_study=args.per_study)
    stat = ct_small_studies(work / "data" / "stat", studies=1, per_study=STAT_INSTANCES, priority="STAT")[0]
    print(f"built in {time.perf_counter() - built:.0f} s", flush=True)
    result: dict = {
        "benchmark": "backlog",
        "machine": machine_info(args.postgres),
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "broker": args.broker,
            "routine": f"{studies} studies x {args.per_study} CT_small instances, CT HEAD, {ASSOCIATIONS} associations",
            "stat": f"{STAT_INSTANCES} CT_small instances, CT HEAD, RequestedProcedurePriority STAT, 1 association",
            "router_processes": ["scp (during the sends)", *WORKER_ROLES, "beat (started together, after)"],
            "clock": "from the workers' and Beat's start (their boot included)",
            "destination": "dcmtk storescp +xa --fork",
        },
    }
    done: list[Run] = []
    with workspace(work, db, args, logs=f"{work}/logs-run*"):
        template_env = router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl")
        db.create_template(template_env, lambda env: configure(env, port=dest_port, folder=work / "tmpl"))
        for n in range(runs):
            print(f"run {n + 1}/{runs}", flush=True)
            run = one_run(routine, stat, work, n, db=db, broker=args.broker, dest_port=dest_port, timeout=args.timeout)
            done.append(run)

    stat_done = median_or_none([r.stat_done for r in done])
    half = median_or_none([r.half_drained for r in done])
    drained = median_or_none([r.drained for r in done])
    met = stat_done is not None and stat_done <= GOAL_SECONDS
    routine_instances = studies * args.per_study
    result["results"] = {
        "median_seconds_stat_delivered_assigned_notified": stat_done,
        "median_seconds_half_backlog_done": half,
        "median_seconds_backlog_drained": drained,
        "ratio_stat_over_half_backlog": round(stat_done / half, 3) if stat_done and half else None,
        "ratio_stat_over_drain": round(stat_done / drained, 3) if stat_done and drained else None,
        "median_routine_instances_per_second_drained": round(routine_instances / drained, 1) if drained else None,
        "runs": [
            {
                "seconds_storescu_per_association": [round(s, 2) for s in r.send_seconds],
                "receipt_instances_per_second": round(routine_instances / sum(r.send_seconds[:-1]), 1),
                "queues_before_workers": r.queued,
                "cpu_idle_before": round(r.idle, 2),
                "workers_ready_seconds": r.workers_ready,
                "stat_delivered_seconds": r.stat_delivered and round(r.stat_delivered, 3),
                "stat_assigned_notified_seconds": r.stat_notified and round(r.stat_notified, 3),
                "stat_done_seconds": r.stat_done and round(r.stat_done, 3),
                "backlog_when_stat_done": r.at_stat_done,
                "half_backlog_done_seconds": r.half_drained and round(r.half_drained, 1),
                "backlog_drained_seconds": r.drained and round(r.drained, 1),
                "stat_timeline_after_workers_start": r.stat_timeline,
                "progress_seconds_studies_done_files": r.progress,
                "stopped_early": r.stopped or None,
                "warnings_and_errors": r.incidents[:200],
                "warnings_and_errors_count": len(r.incidents),
            }
            for r in done
        ],
    }
    result["goal"] = {"stat_done_within_seconds": GOAL_SECONDS, "median_seconds": stat_done, "met": met}
    print()
    print(f"STAT study delivered, assigned and notified: {stat_done} s after the workers' start (median)")
    print(f"routine backlog ({routine_instances} instances): half done after {half} s, drained after {drained} s")
    print(f"goal: STAT within {GOAL_SECONDS:g} s: {'met' if met else 'NOT met'}")
    write_results(output, result)
    return 0 if met else 1


if __name__ == "__main__":
    run_main(main)
