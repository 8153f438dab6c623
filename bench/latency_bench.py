"""Latency benchmark: a STAT study, from the end of its association to delivered, assigned and notified.

Run: .venv/bin/python bench/latency_bench.py [--runs 30] [--quick]

Each run sends one new 10-instance STAT study (CT_small-based, RequestedProcedurePriority STAT, CT HEAD)
with dcmtk's storescu, and times from storescu's exit (the association has ended) until

- delivered: all 10 files are in the destination's folder (dcmtk `storescp +xa --fork`), and
- assigned and notified: the study's stage is `notified` and the neuroradiologist's in-app notification
  row exists (what `study_status` reads),

polling both every 10 ms. The router runs on PostgreSQL and Redis with the Procfile's `scp`, `worker`,
`worker-deliver`, `worker-stat` and `beat`, started once for all runs (as in production: the processes are
up when a study comes), configured by `importconfig` with the destination, a rule sending CT HEAD there
and a neuroradiologist on shift around the clock (tests/support/config.py).

Peer: Orthanc forwarding each stored instance with a Lua script (OnStoredInstance + SendToModality, as
route_bench does) to a second storescp, started once too; the same studies, timed from storescu's exit
until the last file is at its destination. Runs alternate which system goes first; one warm-up study per
system is sent first and not counted.

Goal (issue 8): p95 of delivered + assigned + notified under 2 s. Reported besides: p50/p95 of delivery
alone, ours over Orthanc's. Results go to bench/results/latency.json (latency-quick.json with --quick).

Issue 20: `--assign-after-delivery` gives the rule `assign_after_delivery: true` (the study is assigned
only once the storescp destination has it); same goal; results in latency-assign-after-delivery.json.
`--storage-commitment` measures what storage commitment adds: the router's destination is then an Orthanc
(`storage_commitment: true` in the router's configuration; the router in Orthanc's DicomModalities, to
which it reports over a new association, as Orthanc does), the rule also assigns after delivery, so a study
is assigned once Orthanc committed to it; each run waits until the study is notified and reads from the
rows the delivery's `delivered_at`, its items' last `committed_at` and the commitment request's times. No
Orthanc forwarding peer in that mode. Results in latency-storage-commitment.json.
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
    TIMELINE_EVENTS,
    BenchStudy,
    Orthanc,
    Router,
    RouterDatabase,
    StoreSCP,
    StudyWatch,
    common_arguments,
    ct_small_studies,
    free_port,
    import_config,
    machine_info,
    percentile,
    redis_flush,
    router_env,
    router_incidents,
    run_main,
    scratch,
    settle,
    storescu_checked,
    wipe,
    write_results,
)

GOAL_P95_SECONDS = 2.0
INSTANCES = 10
WORKER_ROLES = ("worker", "worker-deliver", "worker-stat")
SYSTEMS = ("router", "orthanc")
POLL = 0.01  # seconds between two looks at the destination and the database
# No ratio is formed from an Orthanc figure below this: it had forwarded everything while the association
# was still open, and what remains after storescu's exit is the polling's own delay.
RATIO_FLOOR = 0.05
ORTHANC_DESTINATION_AE = "ODEST"

CONFIG = (
    """
destinations:
  - {name: destination, ae_title: %(ae)s, host: 127.0.0.1, port: %(port)d%(destination_options)s}
rules:
  - {name: CT head, priority: 100, match: {modality: CT, body_part: HEAD}, destinations: [destination]%(rule_options)s}
"""
    + READER_ON_SHIFT
)


def configure(
    env: dict, *, port: int, folder: Path, ae: str = DESTINATION_AE, after_delivery: bool = False, commit: bool = False
) -> None:
    """Import the destination, the CT HEAD rule and the neuroradiologist into the template database."""
    text = CONFIG % {
        "ae": ae,
        "port": port,
        "destination_options": ", storage_commitment: true" if commit else "",
        "rule_options": ", assign_after_delivery: true" if after_delivery else "",
    }
    import_config(env, text, folder / "latency.yaml")


_COMMITMENT = """
SELECT d.delivered_at,
       (SELECT max(i.committed_at) FROM routing_deliveryitem i WHERE i.delivery_id = d.id),
       (SELECT count(*) FROM routing_deliveryitem i WHERE i.delivery_id = d.id AND i.committed_at IS NOT NULL),
       (SELECT min(c.requested_at) FROM routing_commitmentrequest c WHERE c.delivery_id = d.id),
       (SELECT min(c.sent_at) FROM routing_commitmentrequest c WHERE c.delivery_id = d.id),
       (SELECT max(c.answered_at) FROM routing_commitmentrequest c WHERE c.delivery_id = d.id),
       (SELECT count(*) FROM routing_commitmentrequest c WHERE c.delivery_id = d.id),
       (SELECT min(a.assigned_at) FROM reading_assignment a WHERE a.study_id = s.id)
FROM routing_delivery d JOIN studies_study s ON s.id = d.study_id WHERE s.study_instance_uid = %s
"""
COMMITMENT_EVENTS = (
    "delivered",
    "last_committed",
    "committed_items",
    "commitment_requested",
    "commitment_sent",
    "commitment_answered",
    "commitment_requests",
    "assigned",
)


def commitment_run(study: BenchStudy, *, router: Router, watch: StudyWatch, timeout: float) -> dict:
    """Send a STAT study to the router (its destination an Orthanc that commits), wait until it is notified
    (assigned once Orthanc committed to it); its commitment's times, in seconds after storescu's exit."""
    quiet = settle(minimum=0.5, maximum=5)
    sent = storescu_checked(router.port, study.dataset(), called=router.ae_title)
    ended, ended_wall = time.perf_counter(), time.time()
    while not watch.done(study.uid):
        if time.perf_counter() - ended > timeout:
            raise RuntimeError(f"after {timeout} s the study is {watch.stage(study.uid)}")
        time.sleep(POLL)
    notified = time.perf_counter() - ended
    row = watch.conn.execute(_COMMITMENT, (study.uid,)).fetchone()
    times = dict(zip(COMMITMENT_EVENTS, row, strict=True))
    seconds = {k: (round(v.timestamp() - ended_wall, 3) if hasattr(v, "timestamp") else v) for k, v in times.items()}
    added = (
        seconds["last_committed"] - seconds["delivered"]
        if seconds["last_committed"] is not None and seconds["delivered"] is not None
        else None
    )
    return {
        "notified": notified,
        "sent": sent,
        "idle": quiet,
        "committed_after_delivered": round(added, 3) if added is not None else None,
        "seconds_after_exit": seconds,
    }


def commitment_main(args, runs: int, output: Path) -> int:
    """--storage-commitment: the router alone, its destination an Orthanc committing (see the docstring)."""
    work = scratch("latency-commit-bench-")
    logs = work / "logs"
    logs.mkdir()
    db = RouterDatabase(args.postgres, logs, name=args.database)
    orthanc_port, router_port = free_port(), free_port()
    print(f"scratch folder {work}; building {runs + 1} studies of {INSTANCES} STAT instances", flush=True)
    studies = ct_small_studies(work / "data", studies=runs + 1, per_study=INSTANCES, priority="STAT")
    warmup, studies = studies[0], studies[1:]
    done: list[dict] = []
    router = orthanc = watch = None
    try:
        template_env = router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl")
        db.create_template(
            template_env,
            lambda env: configure(
                env, port=orthanc_port, folder=work / "tmpl", ae="ORTHANC", after_delivery=True, commit=True
            ),
        )
        db.fresh()
        redis_flush(args.broker)
        orthanc = Orthanc(
            work / "orthanc", logs, port=orthanc_port, modalities={"router": ["ROUTER", "127.0.0.1", router_port]}
        )
        env = router_env(database_url_=db.url, broker_url=args.broker, folder=work / "router")
        router = Router(env, logs, db=db, workers=WORKER_ROLES, beat=True, port=router_port)
        watch = StudyWatch(db.url)
        warm = commitment_run(warmup, router=router, watch=watch, timeout=args.timeout)
        print(f"warm-up  notified after {warm['notified']:6.3f} s", flush=True)
        for n, study in enumerate(studies):
            one = commitment_run(study, router=router, watch=watch, timeout=args.timeout)
            done.append(one)
            print(
                f"run {n + 1:2}/{runs} assigned and notified after {one['notified']:6.3f} s; committed "
                f"{one['committed_after_delivered']} s after delivered; {one['seconds_after_exit']} "
                f"(CPUs {one['idle']:.0%} idle before)",
                flush=True,
            )
        held = orthanc.count()
        if held != INSTANCES * (runs + 1):
            raise RuntimeError(f"Orthanc holds {held} instances, {INSTANCES * (runs + 1)} sent")
        incidents = router_incidents(logs)
    except BaseException:
        print(f"failed: the processes' logs are kept in {logs}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        if watch is not None:
            watch.close()
        for process in (router, orthanc):
            if process is not None:
                process.stop()
        db.drop()
        redis_flush(args.broker)
        if not args.keep:
            wipe(work)

    def pick(event: str) -> list[float]:
        return [r["seconds_after_exit"][event] for r in done if r["seconds_after_exit"][event] is not None]

    total = summary([r["notified"] for r in done])
    added = summary([r["committed_after_delivered"] for r in done if r["committed_after_delivered"] is not None])
    met = total["p95"] < GOAL_P95_SECONDS
    result = {
        "benchmark": "latency-storage-commitment",
        "machine": machine_info(args.postgres),
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "broker": args.broker,
            "study": f"{INSTANCES} CT_small instances, CT HEAD, RequestedProcedurePriority STAT, new UIDs per run",
            "sender": "storescu, 1 association per study; timed from its exit",
            "destination": "Orthanc, storage_commitment true (router in its DicomModalities: reports on a new "
            "association to the router's SCP), SyncStorageArea true (its default)",
            "rule": "CT HEAD, assign_after_delivery true",
            "router_processes": ["scp", *WORKER_ROLES, "beat"],
            "poll_seconds": POLL,
            "percentile": "nearest rank",
        },
        "results": {
            "assigned_and_notified_after_exit": total,
            "committed_after_delivered": added,
            "delivered_after_exit": summary(pick("delivered")),
            "last_committed_after_exit": summary(pick("last_committed")),
            "commitment_sent_after_exit": summary(pick("commitment_sent")),
            "commitment_answered_after_exit": summary(pick("commitment_answered")),
            "assigned_after_exit": summary(pick("assigned")),
            "commitment_requests_per_study": [r["seconds_after_exit"]["commitment_requests"] for r in done],
            "runs": done,
            "warmup_notified": round(warm["notified"], 3),
            "warnings_and_errors": incidents,
        },
        "goal": {"p95_delivered_assigned_notified_under_seconds": GOAL_P95_SECONDS, "p95": total["p95"], "met": met},
    }
    print(
        f"storage commitment: committed after delivered p50 {added['p50']:.3f} s, p95 {added['p95']:.3f} s; "
        f"STAT assigned and notified (after commitment) p50 {total['p50']:.3f} s, p95 {total['p95']:.3f} s "
        f"(goal < {GOAL_P95_SECONDS:g} s: {'met' if met else 'NOT met'})"
    )
    write_results(output, result)
    return 0 if met else 1


@dataclass
class Run:
    delivered: float  # seconds from storescu's exit until all files were seen at the destination
    sent: float  # storescu's wall time
    idle: float  # the CPUs' idle fraction just before sending
    last_file_written: float  # the newest destination file's mtime, after storescu's exit (may be < 0)
    last_file_from_start: float  # the same mtime, after storescu's start: delivery from the first byte
    first_file_written: float  # the oldest destination file's mtime, after storescu's exit
    notified: float | None = None  # router: until stage notified and the in-app row were seen
    ended_wall: float = 0.0  # storescu's exit, time.time(): the origin of the study's timeline
    timeline: dict = field(default_factory=dict)  # router: the study's recorded times, read after all runs

    @property
    def total(self) -> float:
        return max(self.delivered, self.notified or 0.0)


def destination_files(folder: Path, study: BenchStudy) -> list[Path]:
    return [folder / f"CT.{uid}" for uid in study.sop_uids]  # storescp names files modality.SOPInstanceUID


def one_run(
    name: str,
    study: BenchStudy,
    *,
    system: Router | Orthanc,
    destination: StoreSCP,
    watch: StudyWatch | None,
    timeout: float,
) -> Run:
    quiet = settle(minimum=0.5, maximum=5)
    files = destination_files(destination.folder, study)
    started_wall = time.time()
    sent = storescu_checked(system.port, study.dataset(), called=system.ae_title)
    ended, ended_wall = time.perf_counter(), time.time()
    delivered = notified = None
    while delivered is None or (watch is not None and notified is None):
        now = time.perf_counter()
        if delivered is None and all(f.exists() for f in files):
            delivered = now - ended
        if watch is not None and notified is None and watch.done(study.uid):
            notified = now - ended
        if now - ended > timeout:
            state = watch.timeline(study.uid, ended_wall) if watch else {}
            got = sum(f.exists() for f in files)
            raise RuntimeError(f"{name}: after {timeout} s, {got}/{len(files)} files delivered; study: {state}")
        time.sleep(POLL)
    written = [f.stat().st_mtime for f in files]
    last, first = max(written), min(written)
    return Run(delivered, sent, quiet, last - ended_wall, last - started_wall, first - ended_wall, notified, ended_wall)


def summary(values: list[float]) -> dict:
    return {
        "seconds": [round(v, 3) for v in values],
        "p50": round(statistics.median(values), 3),
        "p95": round(percentile(values, 95), 3),
        "max": round(max(values), 3),
    }


def where_time_goes(runs: list[Run]) -> dict:
    """The median, over runs, of each recorded event's time after storescu's exit (negative: before); the
    destination's first and last files by their mtimes."""
    medians = {}
    for event in TIMELINE_EVENTS:
        values = [r.timeline["seconds_after_start"][event] for r in runs if r.timeline.get("seconds_after_start")]
        values = [v for v in values if v is not None]
        medians[event] = round(statistics.median(values), 3) if values else None
    medians["first_file_at_destination"] = round(statistics.median(r.first_file_written for r in runs), 3)
    medians["last_file_at_destination"] = round(statistics.median(r.last_file_written for r in runs), 3)
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--timeout", type=float, default=60, help="longest wait for one study, seconds")
    parser.add_argument("--assign-after-delivery", action="store_true", help="the rule assigns after delivery")
    parser.add_argument("--storage-commitment", action="store_true", help="what storage commitment adds (Orthanc)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 30)
    variant = (
        "-storage-commitment"
        if args.storage_commitment
        else "-assign-after-delivery"
        if args.assign_after_delivery
        else ""
    )
    output = args.output or RESULTS / (f"latency{variant}-quick.json" if args.quick else f"latency{variant}.json")
    if args.storage_commitment:
        return commitment_main(args, runs, output)

    work = scratch("latency-bench-")
    logs = work / "logs"
    logs.mkdir()
    db = RouterDatabase(args.postgres, logs, name=args.database)
    dest_port = free_port()  # in the router's configuration
    print(f"scratch folder {work}; building {runs + 1} studies of {INSTANCES} STAT instances", flush=True)
    studies = ct_small_studies(work / "data", studies=runs + 1, per_study=INSTANCES, priority="STAT")
    warmup, studies = studies[0], studies[1:]
    result: dict = {
        "benchmark": "latency",
        "machine": machine_info(args.postgres),
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "broker": args.broker,
            "study": f"{INSTANCES} CT_small instances, CT HEAD, RequestedProcedurePriority STAT, new UIDs per run",
            "sender": "storescu, 1 association per study; timed from its exit",
            "destination": "dcmtk storescp +xa --fork (one per system)",
            "router_processes": ["scp", *WORKER_ROLES, "beat"],
            "router_processes_started": "once, before the warm-up study",
            "peer": "Orthanc, Lua OnStoredInstance + SendToModality",
            "rule_assign_after_delivery": args.assign_after_delivery,
            "poll_seconds": POLL,
            "warmup_studies_per_system": 1,
            "percentile": "nearest rank",
        },
    }
    measured: dict[str, list[Run]] = {name: [] for name in SYSTEMS}
    warm: dict[str, Run] = {}
    router = orthanc = dest_router = dest_orthanc = watch = None
    try:
        template_env = router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl")
        db.create_template(
            template_env,
            lambda env: configure(env, port=dest_port, folder=work / "tmpl", after_delivery=args.assign_after_delivery),
        )
        db.fresh()
        redis_flush(args.broker)
        dest_router = StoreSCP(work / "dest-router", logs, ae_title=DESTINATION_AE, port=dest_port, fork=True)
        dest_orthanc = StoreSCP(work / "dest-orthanc", logs, ae_title=ORTHANC_DESTINATION_AE, fork=True)
        env = router_env(database_url_=db.url, broker_url=args.broker, folder=work / "router")
        router = Router(env, logs, db=db, workers=WORKER_ROLES, beat=True)
        orthanc = Orthanc(work / "orthanc", logs, forward_to=(ORTHANC_DESTINATION_AE, dest_orthanc.port))
        watch = StudyWatch(db.url)
        setups = {
            "router": {"system": router, "destination": dest_router, "watch": watch},
            "orthanc": {"system": orthanc, "destination": dest_orthanc, "watch": None},
        }
        for name in SYSTEMS:
            warm[name] = one_run(name, warmup, timeout=args.timeout, **setups[name])
            print(f"warm-up  {name:8} delivered after {warm[name].delivered:6.3f} s", flush=True)
        for n, study in enumerate(studies):
            for name in SYSTEMS if n % 2 == 0 else SYSTEMS[::-1]:
                done = one_run(name, study, timeout=args.timeout, **setups[name])
                measured[name].append(done)
                told = f", assigned and notified after {done.notified:6.3f} s" if done.notified is not None else ""
                print(
                    f"run {n + 1:2}/{runs} {name:8} delivered after {done.delivered:6.3f} s{told} "
                    f"(storescu {done.sent:5.2f} s; CPUs {done.idle:.0%} idle before)",
                    flush=True,
                )
        for name, destination in (("router", dest_router), ("orthanc", dest_orthanc)):
            held = destination.count()
            if held != INSTANCES * (runs + 1):
                raise RuntimeError(f"{held} files at {name}'s destination, {INSTANCES * (runs + 1)} sent")
        time.sleep(1)  # a delivery's row is marked delivered just after its files arrived
        for study, done in zip(studies, measured["router"], strict=True):
            done.timeline = watch.timeline(study.uid, done.ended_wall)
        incidents = router_incidents(logs)
    except BaseException:
        print(f"failed: the processes' logs are kept in {logs}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        if watch is not None:
            watch.close()
        for process in (router, orthanc, dest_router, dest_orthanc):
            if process is not None:
                process.stop()
        db.drop()
        redis_flush(args.broker)
        if not args.keep:
            wipe(work)

    ours, theirs = measured["router"], measured["orthanc"]
    delivered = {name: summary([r.delivered for r in measured[name]]) for name in SYSTEMS}
    from_start = {name: summary([r.last_file_from_start for r in measured[name]]) for name in SYSTEMS}
    total = summary([r.total for r in ours])
    notified = summary([r.notified for r in ours])

    def ratios(figures: dict) -> dict:
        ours, theirs = figures["router"], figures["orthanc"]
        return {q: round(ours[q] / theirs[q], 2) if theirs[q] >= RATIO_FLOOR else None for q in ("p50", "p95")}

    ratio_after_exit, ratio_from_start = ratios(delivered), ratios(from_start)
    met = total["p95"] < GOAL_P95_SECONDS
    result["results"] = {
        "router": {
            "delivered_after_exit": delivered["router"],
            "assigned_and_notified_after_exit": notified,
            "delivered_assigned_and_notified_after_exit": total,
            "delivered_from_start": from_start["router"],
            "seconds_storescu": [round(r.sent, 3) for r in ours],
            "last_file_written_after_exit": [round(r.last_file_written, 3) for r in ours],
            "cpu_idle_before": [round(r.idle, 2) for r in ours],
            "median_event_seconds_after_exit": where_time_goes(ours),
            "timelines": [r.timeline for r in ours],
            "warmup": {"delivered": round(warm["router"].delivered, 3), "total": round(warm["router"].total, 3)},
            "warnings_and_errors": incidents,
        },
        "orthanc": {
            "delivered_after_exit": delivered["orthanc"],
            "delivered_from_start": from_start["orthanc"],
            "seconds_storescu": [round(r.sent, 3) for r in theirs],
            "last_file_written_after_exit": [round(r.last_file_written, 3) for r in theirs],
            "cpu_idle_before": [round(r.idle, 2) for r in theirs],
            "warmup": {"delivered": round(warm["orthanc"].delivered, 3)},
        },
        "ratio_router_over_orthanc_delivered_after_exit": ratio_after_exit,
        "ratio_router_over_orthanc_delivered_from_start": ratio_from_start,
        "notes": {
            "after_exit": "polled every 10 ms from storescu's exit; 0 = everything was there at the first look",
            "ratio": f"not formed (null) when Orthanc's figure is below {RATIO_FLOOR} s",
            "from_start": "the newest destination file's mtime minus storescu's start (includes the send)",
        },
    }
    result["goal"] = {
        "p95_delivered_assigned_notified_under_seconds": GOAL_P95_SECONDS,
        "p95": total["p95"],
        "met": met,
    }

    print()
    print(f"{'':40}{'p50 s':>8}{'p95 s':>8}{'max s':>8}")
    for label, figures in (
        ("router delivered, after exit", delivered["router"]),
        ("router assigned and notified, after exit", notified),
        ("router all three, after exit", total),
        ("orthanc delivered, after exit", delivered["orthanc"]),
        ("router delivered, from start", from_start["router"]),
        ("orthanc delivered, from start", from_start["orthanc"]),
    ):
        print(f"{label:40}{figures['p50']:8.3f}{figures['p95']:8.3f}{figures['max']:8.3f}")

    def shown(ratio: dict) -> str:
        return ", ".join(f"{q} " + (f"{v:.2f}x" if v is not None else "-") for q, v in ratio.items())

    print(f"delivery, router / orthanc, after exit: {shown(ratio_after_exit)}; from start: {shown(ratio_from_start)}")
    print(f"median times after storescu's exit: {result['results']['router']['median_event_seconds_after_exit']}")
    if incidents:
        print(f"{len(incidents)} warnings/errors logged by the router (in the results file)")
    print(
        f"goal: p95 of delivered + assigned + notified {total['p95']:.3f} s < {GOAL_P95_SECONDS:g} s: "
        f"{'met' if met else 'NOT met'}"
    )
    write_results(output, result)
    return 0 if met else 1


if __name__ == "__main__":
    run_main(main)
