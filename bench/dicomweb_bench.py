"""DICOMweb benchmark: delivery by STOW-RS beside delivery by C-STORE, to the same Orthanc (issue 18).

Run: .venv/bin/python bench/dicomweb_bench.py [--runs 3] [--quick]

The router's two senders as a delivery runs them, without the database: `stow.send` (apps/routing/stow.py:
batches of 10 instances or 10 MB, streamed from disk, each instance's outcome read from the answer) to
Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb), and `dicom_send.send` (one association) to the same
Orthanc's DICOM port. Orthanc is started fresh on empty storage for each send (SyncStorageArea true, its
default: fsync per file). Data sets as the ingest benchmark makes them: 1,000 small CT instances (39 KB) and
a 200-slice 512x512 CT (105 MB); 100 and 20 with --quick.

Receipt: the same data set sent by STOW-RS (the same sender, batches of 10) to the router's receiver
(`POST /dicomweb/studies`: the Procfile's web role, gunicorn, one worker, on a fresh copy of a migrated
PostgreSQL database; each instance fsync'ed and its row committed before it is answered) and to Orthanc's
own STOW-RS receiver.

The figures are STOW-RS delivery throughput over C-STORE throughput, and our STOW-RS receipt over Orthanc's
(medians of --runs). No goal is set by the issue; they are reported. Results go to
bench/results/dicomweb.json (dicomweb-quick.json with --quick).
"""

import argparse
import os
import subprocess
import time

from common import (
    BIN,
    RESULTS,
    Orthanc,
    Process,
    RouterDatabase,
    Series,
    code_version,
    common_arguments,
    free_port,
    machine_info,
    make_datasets,
    procfile,
    python_manage,
    router_env,
    run_main,
    scratch,
    settle,
    wait_for_count,
    wipe,
    workspace,
    write_results,
)
from transform_bench import files_of

from apps.routing import dicom_send, stow

SENDERS = ("c-store", "stow-rs")
RECEIVERS = ("orthanc-stow", "router-stow")


class RouterWeb:
    """The Procfile's web role on a fresh database, with a sending account; `url` is its DICOMweb base."""

    name = "router"

    def __init__(self, work, db: RouterDatabase, broker: str) -> None:
        self.db = db
        env = router_env(database_url_=db.fresh(), broker_url=broker, folder=work / "router")
        port = free_port()
        create = (
            "from django.contrib.auth.models import Group, User; from apps.accounts.services import token_issue; "
            "u = User.objects.create(username='bench'); u.groups.add(Group.objects.get(name='stow-senders')); "
            "print(token_issue(user=u, name='bench')[1])"
        )
        made = subprocess.run(python_manage("shell", "-c", create), env=env, capture_output=True, text=True, check=True)
        self.token = made.stdout.strip().splitlines()[-1]
        args = procfile.command("web", env={"WEB_PORT": str(port), "WEB_WORKERS": "1"})
        args[0] = str(BIN / "gunicorn")
        self.process = Process("web", args, env=env, log_dir=work / "logs")
        self.process.wait_for_port(port)
        self.url = f"http://127.0.0.1:{port}/dicomweb"

    def count(self) -> int:
        return self.db.count("SELECT count(*) FROM studies_receivedinstance")

    def stop(self) -> None:
        self.process.stop()


def one_receipt(kind: str, files, work, db, broker: str) -> float:
    if kind == "router-stow":
        receiver = RouterWeb(work, db, broker)
        os.environ["BENCH_ROUTER_TOKEN"] = receiver.token
        target = stow.WebTarget(url=receiver.url, auth="token", credentials="env:BENCH_ROUTER_TOKEN", timeout=120)
    else:
        receiver = Orthanc(work / "orthanc", work / "logs", dicomweb=True)
        target = stow.WebTarget(url=f"http://127.0.0.1:{receiver.http_port}/dicom-web", timeout=120)
    try:
        settle()
        started = time.perf_counter()
        results = stow.send(target, files)
        elapsed = time.perf_counter() - started
        if any(r.kind != dicom_send.DELIVERED for r in results):
            raise RuntimeError(
                f"{kind}: not every instance was stored: {[r for r in results if r.kind != 'delivered'][:2]}"
            )
        wait_for_count(receiver, len(files), timeout=60)
        return elapsed
    finally:
        receiver.stop()
        wipe(work / "orthanc")
        wipe(work / "router")


def one_send(kind: str, files, work) -> float:
    orthanc = Orthanc(work / "orthanc", work / "logs", dicomweb=True)
    try:
        settle()
        started = time.perf_counter()
        if kind == "stow-rs":
            target = stow.WebTarget(url=f"http://127.0.0.1:{orthanc.http_port}/dicom-web", timeout=120)
            results = stow.send(target, files)
        else:
            results = dicom_send.send(dicom_send.Target("ORTHANC", "127.0.0.1", orthanc.port, "ROUTER"), files)
        elapsed = time.perf_counter() - started
        if any(r.kind != dicom_send.DELIVERED for r in results):
            raise RuntimeError(
                f"{kind}: not every instance was delivered: {[r for r in results if r.kind != 'delivered'][:2]}"
            )
        wait_for_count(orthanc, len(files), timeout=60)
        return elapsed
    finally:
        orthanc.stop()
        wipe(work / "orthanc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    output = RESULTS / ("dicomweb-quick.json" if args.quick else "dicomweb.json")
    work = scratch("dicomweb-bench-")
    (work / "logs").mkdir()
    datasets = make_datasets(work / "data", quick=args.quick)
    seconds = {(d.name, k): Series() for d in datasets for k in SENDERS + RECEIVERS}
    db = RouterDatabase(args.postgres, work / "logs", name=args.database)
    with workspace(work, db, args, logs=f"{work / 'logs'}*"):
        db.create_template(router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl"))
        for data in datasets:
            files = files_of(data)
            for run in range(runs):
                for kind in SENDERS + RECEIVERS if run % 2 == 0 else (SENDERS + RECEIVERS)[::-1]:
                    if kind in SENDERS:
                        elapsed = one_send(kind, files, work)
                    else:
                        elapsed = one_receipt(kind, files, work, db, args.broker)
                    seconds[data.name, kind].values.append(elapsed)
                    rate = data.throughput(elapsed)
                    print(f"{data.name:6} run {run + 1}/{runs} {kind:12} {elapsed:7.2f} s {rate:8.1f} {data.unit}")
    figures = {}
    print(f"\n{'data':8}{'C-STORE':>10}{'STOW-RS':>10}{'ratio':>7}{'Orthanc recv':>14}{'our recv':>10}{'ratio':>7}")
    for data in datasets:
        rate = {k: data.throughput(seconds[data.name, k].median) for k in SENDERS + RECEIVERS}
        figures[data.name] = {
            "unit": data.unit,
            **{k.replace("-", "_"): round(v, 2) for k, v in rate.items()},
            "stow_over_c_store": round(rate["stow-rs"] / rate["c-store"], 3),
            "our_receipt_over_orthanc": round(rate["router-stow"] / rate["orthanc-stow"], 3),
            "seconds": {k: [round(s, 3) for s in seconds[data.name, k].values] for k in SENDERS + RECEIVERS},
        }
        print(
            f"{data.name:8}{rate['c-store']:10.1f}{rate['stow-rs']:10.1f}{rate['stow-rs'] / rate['c-store']:7.2f}"
            f"{rate['orthanc-stow']:14.1f}{rate['router-stow']:10.1f}{rate['router-stow'] / rate['orthanc-stow']:7.2f}"
        )
    result = {
        "benchmark": "dicomweb",
        "machine": machine_info(),
        "code": code_version(),
        "parameters": {"runs": runs, "quick": args.quick, "stow_batch": "10 instances / 10 MB"},
        "datasets": {d.name: d.describe() for d in datasets},
        "figures": figures,
    }
    write_results(output, result)
    return 0


if __name__ == "__main__":
    run_main(main)
