"""Query/retrieve benchmark (issue 19): C-FIND over 100,000 studies, and C-MOVE against Orthanc's.

Run: .venv/bin/python bench/qr_bench.py [--studies 100000] [--runs 5] [--quick]

One PostgreSQL database of its own (router_bench_qr: created, migrated, dropped at the end unless --keep)
and Redis database 14 (flushed; the SCP publishes the C-MOVE study's chain there, and no worker runs).

C-FIND. `--studies` studies of ~30,000 patients (`--patients`), 1-3 series each and 1-3 instances per
series, every instance held (file_state "stored"), written as rows by COPY (bench/qr_populate.py: no files;
far fewer instances per study than a site holds, said in the results), then ANALYZE. The router's SCP
(`runscp`, the Procfile's command) answers a pynetdicom SCU (TCP_NODELAY, as the router's own sockets),
one association per round, Study Root at STUDY level, asking the return keys a viewer asks (names, dates,
modalities, counts): `--finds` queries by PatientID, as many by AccessionNumber (the goal: p95 < 100 ms),
and, for information, `--finds`/10 PatientName prefixes (`DAKA*`) and one-week StudyDate ranges. Each
request is timed from `send_c_find` to its final response, every match received. `--find-rounds` (3)
rounds. The same queries run through the engine alone (apps/archive/query.py `search`, in this process)
split the time between the database and the DIMSE face; one query of each kind is EXPLAIN ANALYZEd.

C-MOVE. One study of `--instances` CT_small instances (new UIDs, as tests/support/dicom.py makes them) sent
with storescu to the router (persisted in this process, as the pipeline's persist step does) and to Orthanc
(its own configuration, the destination and the caller in DicomModalities, defaults otherwise). movescu
(TCP_NODELAY=1) asks each to move the study, by StudyInstanceUID, to the same dcmtk storescp
(`+xa --fork`, fresh for each run); timed from movescu's start to its exit, and the destination must then
hold every instance. The order alternates; medians of `--runs` (5). Then one run each to a storescp without
--fork (one association at a time), and the router's sender alone (bench/send_files.py) sending the same
files, as the floor of what a C-MOVE of ours can take.

Goal (issue 19): C-FIND p95 under 100 ms for PatientID and AccessionNumber. C-MOVE: the ratio router/Orthanc
(instances/s), no goal set. Results go to bench/results/qr_bench.json (qr_bench-quick.json with --quick).
"""

import argparse
import contextlib
import logging
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    CALLING_AE,
    NODELAY,
    RESULTS,
    ROOT,
    Orthanc,
    Process,
    Series,
    StoreSCP,
    _postgres,
    common_arguments,
    ct_small_studies,
    database_url,
    dcmtk,
    free_port,
    import_config,
    machine_info,
    percentile,
    procfile,
    redis_flush,
    router_env,
    run_main,
    scratch,
    settle,
    storescu_checked,
    wait_for_count,
    wait_until,
    wipe,
    write_results,
)

GOAL_P95_MS = 100.0
SCU_AE = "BENCHSCU"
DEST_AE = "DEST"
ROUTER_AE = "ROUTER"
SYSTEMS = ("router", "orthanc")
# The return keys of a viewer's study list (Weasis, OsiriX and the like ask for these and a few more).
RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)

CONFIG = """
callers:
  - {ae_title: %(scu)s, may: [query, retrieve]}
  - {ae_title: %(modality)s}
destinations:
  - {name: bench-destination, ae_title: %(dest)s, host: 127.0.0.1, port: %(port)d}
"""


def django_setup(env: dict) -> None:
    """This process reads and writes the benchmark's database through the router's models."""
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerproject.settings")
    import django

    django.setup()
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


# --- C-FIND ------------------------------------------------------------------------------------------


def _queries(populated, count: int, rnd: random.Random) -> dict[str, list[list[tuple[str, str]]]]:
    """The matching keys of each kind of query, drawn from the rows written."""
    n = len(populated.patient_ids)
    picks = [rnd.randrange(n) for _ in range(count)]
    prefixes = [populated.patient_names[rnd.randrange(n)][:4] + "*" for _ in range(max(count // 10, 5))]
    ranges = []
    for _ in range(max(count // 10, 5)):
        day = populated.study_dates[rnd.randrange(n)]
        start = f"{day[:6]}{min(int(day[6:]), 21):02d}"
        ranges.append(f"{start}-{start[:6]}{int(start[6:]) + 6:02d}")  # a week
    return {
        "PatientID": [[("PatientID", populated.patient_ids[i])] for i in picks],
        "AccessionNumber": [[("AccessionNumber", populated.accession_numbers[rnd.randrange(n)])] for _ in picks],
        "PatientName prefix": [[("PatientName", p)] for p in prefixes],
        "StudyDate week": [[("StudyDate", r)] for r in ranges],
    }


def _identifier(keys: list[tuple[str, str]]):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, "")
    for keyword, value in keys:
        setattr(ds, keyword, value)
    return ds


def _scu_connection(event) -> None:
    """Our SCU's socket as the router's own: TCP_NODELAY, and pynetdicom's reactor kept away from the DIMSE
    queue (the router's sender's fix, apps/routing/dicom_send.py): without it pynetdicom 3.0.4 sometimes
    drops a C-FIND response ("unexpected C-FIND service message") and the request waits for its timeout."""
    from apps.routing import dicom_send

    with contextlib.suppress(OSError, AttributeError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if dicom_send.PATCH_FITS:
        dicom_send._reactor_reads_nothing(event.assoc)


def find_round(port: int, queries: dict[str, list]) -> dict[str, dict]:
    """One association; every query of every kind in turn; per kind the milliseconds of each request (to
    its final response) and the matches received."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=ROUTER_AE, evt_handlers=[(evt.EVT_CONN_OPEN, _scu_connection)])
    if not assoc.is_established:
        raise RuntimeError("the router refused the C-FIND association")
    out: dict[str, dict] = {}
    try:
        for _ in range(3):  # warm-up: the SCP's first queries connect, prepare, fill caches
            for _status, _ in assoc.send_c_find(_identifier(queries["PatientID"][0]), FIND):
                pass
        for kind, all_keys in queries.items():
            times, matches = [], []
            for keys in all_keys:
                identifier = _identifier(keys)
                started = time.perf_counter()
                found = 0
                final = None
                for status, ds in assoc.send_c_find(identifier, FIND):
                    if status is None or "Status" not in status:
                        raise RuntimeError(f"C-FIND {kind}: no answer (association {assoc.is_established})")
                    if status.Status in (0xFF00, 0xFF01):
                        found += ds is not None
                    else:
                        final = status.Status
                elapsed = (time.perf_counter() - started) * 1000
                if final not in (0x0000, 0xB001):
                    raise RuntimeError(f"C-FIND {kind} {keys}: final status 0x{final or 0:04X}")
                times.append(elapsed)
                matches.append(found)
            out[kind] = {"ms": times, "matches": matches}
    finally:
        assoc.release()
    return out


def engine_alone(queries: dict[str, list]) -> dict[str, list[float]]:
    """The same queries through the query engine alone (search, as services.find calls it), in ms."""
    from django.conf import settings

    from apps.archive import query as q

    asked = [(k, "") for k in RETURN_KEYS]
    out = {}
    for kind, all_keys in queries.items():
        times = []
        for keys in all_keys:
            given = dict(keys)
            query = q.query_make(level="STUDY", keys=[(k, given.get(k, v)) for k, v in asked])
            started = time.perf_counter()
            q.search(query, limit=settings.QR_MAX_RESULTS, fold_person_names=settings.QR_FOLD_PERSON_NAMES)
            times.append((time.perf_counter() - started) * 1000)
        out[kind] = times
    return out


def explain(queries: dict[str, list]) -> dict[str, list[dict]]:
    """EXPLAIN ANALYZE of every statement `search` issues for the first query of each kind."""
    from django.conf import settings
    from django.db import connection

    from apps.archive import query as q

    asked = [(k, "") for k in RETURN_KEYS]
    plans: dict[str, list[dict]] = {}
    for kind, all_keys in queries.items():
        given = dict(all_keys[0])
        query = q.query_make(level="STUDY", keys=[(k, given.get(k, v)) for k, v in asked])
        captured: list[tuple[str, tuple]] = []

        def capture(execute, sql, params, many, context, captured=captured):
            captured.append((sql, params))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(capture):
            q.search(query, limit=settings.QR_MAX_RESULTS, fold_person_names=settings.QR_FOLD_PERSON_NAMES)
        plans[kind] = []
        with connection.cursor() as cursor:
            for sql, params in captured:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                plan = [row[0] for row in cursor.fetchall()]
                plans[kind].append({"sql": sql, "params": [str(p) for p in params or ()], "plan": plan})
    return plans


def stats(ms: list[float]) -> dict:
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


# --- C-MOVE ------------------------------------------------------------------------------------------


def movescu(port: int, called: str, study_uid: str) -> tuple[float, str]:
    """movescu's wall time moving the study to DEST, and its final status line; a failure stops the run."""
    args = [dcmtk("movescu"), "-v", "-S", "-aet", SCU_AE, "-aec", called, "-aem", DEST_AE]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, **NODELAY})
    elapsed = time.perf_counter() - started
    output = result.stdout + result.stderr
    final = re.findall(r"Received Final Move Response \(([^)]*)\)", output)
    if result.returncode != 0 or not final or final[-1] != "Success":
        raise RuntimeError(f"movescu to {called} failed ({result.returncode}):\n{output[-2000:]}")
    return elapsed, final[-1]


def one_move(name: str, port: int, called: str, study, work: Path, dest_port: int, *, fork: bool) -> dict:
    folder = work / f"dest-{name}-{time.monotonic_ns()}"
    destination = StoreSCP(folder, work / "logs", ae_title=DEST_AE, port=dest_port, fork=fork)
    try:
        idle = settle()
        seconds, _ = movescu(port, called, study.uid)
        wait_for_count(destination, len(study.paths), timeout=30)
        return {"seconds": seconds, "cpu_idle_before": idle}
    finally:
        destination.stop()
        wipe(folder)


def router_holds(study, *, timeout: float = 60) -> None:
    """Persist the study the SCP registered (no worker runs), as the pipeline's persist step does."""
    from apps.studies.models import FileState, Instance, Study
    from apps.studies.services import study_persist

    row = wait_until(
        lambda: Study.objects.filter(study_instance_uid=study.uid).first(), timeout=timeout, what="the study row"
    )
    study_persist(study_id=row.pk)
    held = Instance.objects.filter(study=row, file_state=FileState.STORED).count()
    if held != len(study.paths):
        raise RuntimeError(f"the router holds {held} of {len(study.paths)} instances")


def sender_alone(study, work: Path) -> float:
    from route_bench import Sender

    folder = work / f"sender-{time.monotonic_ns()}"
    destination = StoreSCP(folder, work / "logs", ae_title=DEST_AE, fork=True)
    sender = None
    try:
        sender = Sender(study.dataset(), destination.port)
        settle()
        sender.go()
        elapsed = sender.done()
        wait_for_count(destination, len(study.paths), timeout=30)
        return elapsed
    finally:
        if sender is not None:
            sender.stop()
        destination.stop()
        wipe(folder)


def retrieval_times() -> list[float]:
    """The router's own time per C-MOVE (its ledger: started to finished), in seconds."""
    from apps.archive.models import Retrieval

    rows = Retrieval.objects.filter(kind="move", finished_at__isnull=False).order_by("pk")
    return [round((r.finished_at - r.started_at).total_seconds(), 3) for r in rows]


# --- the run -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.set_defaults(broker="redis://127.0.0.1:6379/14")
    parser.add_argument("--database", default="router_bench_qr", help="the benchmark's own database (dropped)")
    parser.add_argument("--studies", type=int, default=None, help="studies written (100,000; 10,000 with --quick)")
    parser.add_argument("--patients", type=int, default=None, help="patients they belong to (30% of --studies)")
    parser.add_argument("--finds", type=int, default=None, help="C-FINDs per indexed key and round (200)")
    parser.add_argument("--find-rounds", type=int, default=None, help="rounds of C-FINDs (3; 1 with --quick)")
    parser.add_argument("--instances", type=int, default=None, help="instances of the moved study (300)")
    args = parser.parse_args()
    quick = args.quick
    runs = args.runs or (1 if quick else 5)
    studies = args.studies or (10_000 if quick else 100_000)
    patients = args.patients or max(studies * 3 // 10, 1)
    finds = args.finds or (50 if quick else 200)
    rounds = args.find_rounds or (1 if quick else 3)
    instances = args.instances or (50 if quick else 300)
    output = args.output or RESULTS / ("qr_bench-quick.json" if quick else "qr_bench.json")

    work = scratch("qr-bench-")
    logs = work / "logs"
    logs.mkdir()
    url = database_url(args.postgres, args.database)
    dest_port = free_port()  # the destination's port is in the router's configuration: one for every run
    env = router_env(database_url_=url, broker_url=args.broker, folder=work / "router")
    processes: list = []
    result: dict = {
        "benchmark": "qr",
        "machine": machine_info(args.postgres),
        "parameters": {
            "quick": quick,
            "database": args.database,
            "broker": args.broker,
            "studies": studies,
            "patients": patients,
            "instances_per_series": "1-3 (rows only, no files)",
            "series_per_study": "1-3",
            "finds_per_indexed_key_per_round": finds,
            "find_rounds": rounds,
            "find_client": "pynetdicom SCU, one association per round, TCP_NODELAY, Study Root, STUDY level",
            "find_return_keys": list(RETURN_KEYS),
            "move_instances": instances,
            "move_runs": runs,
            "move_client": "dcmtk movescu -S, TCP_NODELAY=1, by StudyInstanceUID",
            "move_destination": "dcmtk storescp +xa --fork (and one run without --fork), TCP_NODELAY=1",
        },
    }
    status = 1
    try:
        _postgres(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)", args.postgres)
        _postgres(f"CREATE DATABASE {args.database}", args.postgres)
        redis_flush(args.broker)
        with open(logs / "migrate.log", "ab") as log:
            subprocess.run(
                procfile.command("release"), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True
            )
        import_config(
            env,
            CONFIG % {"scu": SCU_AE, "modality": CALLING_AE, "dest": DEST_AE, "port": dest_port},
            work / "qr.yaml",
        )
        django_setup(env)
        from qr_populate import populate

        print(f"scratch folder {work}; writing {studies:,} studies of {patients:,} patients", flush=True)
        populated = populate(studies=studies, patients=patients)
        print(
            f"wrote {populated.studies:,} studies, {populated.series:,} series, {populated.instances:,} instances "
            f"in {populated.seconds:.1f} s",
            flush=True,
        )
        result["populated"] = {
            "studies": populated.studies,
            "series": populated.series,
            "instances": populated.instances,
            "seconds": round(populated.seconds, 1),
        }

        port = free_port()
        scp = Process("scp", procfile.command("scp", "--host", "127.0.0.1", "--port", str(port)), env=env, log_dir=logs)
        processes.append(scp)
        scp.wait_for_port(port)

        # C-FIND
        queries = _queries(populated, finds, random.Random(1919))
        per_round = []
        for r in range(rounds):
            idle = settle()
            done = find_round(port, queries)
            per_round.append(done)
            line = "; ".join(
                f"{k} p50 {percentile(v['ms'], 50):.1f} p95 {percentile(v['ms'], 95):.1f}" for k, v in done.items()
            )
            print(f"C-FIND round {r + 1}/{rounds} (CPUs {idle:.0%} idle before): {line} ms", flush=True)
        find_figures = {}
        for kind in queries:
            all_ms = [ms for done in per_round for ms in done[kind]["ms"]]
            matches = [m for done in per_round for m in done[kind]["matches"]]
            find_figures[kind] = {
                **stats(all_ms),
                "per_round": [stats(done[kind]["ms"]) for done in per_round],
                "matches_median": statistics.median(matches),
                "matches_max": max(matches),
            }
        # What-if, not the figure: the same round with the SCP keeping its database connection between
        # requests (DATABASE_CONN_MAX_AGE, a setting of the router; production's default 0 reconnects for
        # every C-FIND, docs/BENCHMARKS.md).
        port_kept = free_port()
        kept_env = {**env, "DATABASE_CONN_MAX_AGE": "600"}
        command = procfile.command("scp", "--host", "127.0.0.1", "--port", str(port_kept))
        kept = Process("scp-conn-max-age", command, env=kept_env, log_dir=logs)
        processes.append(kept)
        kept.wait_for_port(port_kept)
        settle()
        kept_round = find_round(port_kept, queries)
        kept.stop()
        line = "; ".join(
            f"{k} p50 {percentile(v['ms'], 50):.1f} p95 {percentile(v['ms'], 95):.1f}" for k, v in kept_round.items()
        )
        print(f"C-FIND with DATABASE_CONN_MAX_AGE=600 (what-if): {line} ms", flush=True)
        for kind in queries:
            find_figures[kind]["what_if_database_conn_max_age_600"] = stats(kept_round[kind]["ms"])
        alone = engine_alone(queries)
        for kind, ms in alone.items():
            find_figures[kind]["engine_alone"] = stats(ms)
        result["cfind"] = find_figures
        result["cfind_explain"] = explain(queries)
        goal_met = all(find_figures[k]["p95_ms"] < GOAL_P95_MS for k in ("PatientID", "AccessionNumber"))
        result["cfind_goal"] = {"p95_ms_below": GOAL_P95_MS, "keys": ["PatientID", "AccessionNumber"], "met": goal_met}

        # C-MOVE
        study = ct_small_studies(work / "data", studies=1, per_study=instances)[0]
        data = study.dataset()
        storescu_checked(port, data, called=ROUTER_AE)
        router_holds(study)
        orthanc = Orthanc(
            work / "orthanc",
            logs,
            extra={
                "DicomModalities": {
                    "destination": [DEST_AE, "127.0.0.1", dest_port],
                    "benchscu": [SCU_AE, "127.0.0.1", 104],
                }
            },
        )
        processes.append(orthanc)
        storescu_checked(orthanc.port, data, called=orthanc.ae_title)
        if orthanc.count() != instances:
            raise RuntimeError(f"Orthanc holds {orthanc.count()} of {instances} instances")
        peers = {"router": (port, ROUTER_AE), "orthanc": (orthanc.port, orthanc.ae_title)}
        moves: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
        for r in range(runs):
            for name in SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]:
                done = one_move(name, *peers[name], study, work, dest_port, fork=True)
                moves[name].append(done)
                print(
                    f"C-MOVE run {r + 1}/{runs} {name:8} {done['seconds']:6.2f} s, "
                    f"{instances / done['seconds']:6.1f} instances/s (CPUs {done['cpu_idle_before']:.0%} idle before)",
                    flush=True,
                )
        serial = {name: one_move(name, *peers[name], study, work, dest_port, fork=False) for name in SYSTEMS}
        sender = Series([sender_alone(study, work) for _ in range(max(runs // 2, 1))])
        ledger = retrieval_times()
        move_figures: dict = {"instances": instances, "megabytes": round(data.megabytes, 2), "systems": {}}
        for name in SYSTEMS:
            seconds = Series([m["seconds"] for m in moves[name]])
            move_figures["systems"][name] = {
                "seconds": [round(s, 3) for s in seconds.values],
                "median_seconds": round(seconds.median, 3),
                "median_instances_per_second": round(instances / seconds.median, 1),
                "cpu_idle_before": [round(m["cpu_idle_before"], 2) for m in moves[name]],
                "serial_destination_seconds": round(serial[name]["seconds"], 3),
                "serial_destination_instances_per_second": round(instances / serial[name]["seconds"], 1),
            }
        router_rate = move_figures["systems"]["router"]["median_instances_per_second"]
        orthanc_rate = move_figures["systems"]["orthanc"]["median_instances_per_second"]
        move_figures["ratio_router_over_orthanc"] = round(router_rate / orthanc_rate, 3)
        move_figures["router_ledger_seconds_per_move"] = ledger
        move_figures["router_sender_alone_seconds"] = [round(s, 3) for s in sender.values]
        move_figures["router_sender_alone_instances_per_second"] = round(instances / sender.median, 1)
        result["cmove"] = move_figures
        status = 0 if goal_met else 1

        print()
        for kind, f in find_figures.items():
            e = f["engine_alone"]
            print(
                f"C-FIND {kind:20} p50 {f['p50_ms']:7.1f}  p95 {f['p95_ms']:7.1f}  max {f['max_ms']:7.1f} ms "
                f"(engine alone p50 {e['p50_ms']:.1f}, p95 {e['p95_ms']:.1f}; matches median {f['matches_median']})"
            )
        print(
            f"C-FIND goal p95 < {GOAL_P95_MS:g} ms for PatientID and AccessionNumber: "
            f"{'met' if goal_met else 'NOT met'}"
        )
        print(
            f"C-MOVE {instances} instances: router {router_rate} instances/s, Orthanc {orthanc_rate} "
            f"({move_figures['ratio_router_over_orthanc']:.2f}x); the router's sender alone "
            f"{move_figures['router_sender_alone_instances_per_second']} instances/s"
        )
        write_results(output, result)
    except BaseException:
        print(f"failed: the processes' logs are kept in {logs}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        for process in reversed(processes):
            process.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if not args.keep:
            _postgres(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)", args.postgres)
            wipe(work)
        redis_flush(args.broker)
    return status


if __name__ == "__main__":
    run_main(main)
