"""DICOMweb benchmark: delivery by STOW-RS beside delivery by C-STORE, to the same Orthanc (issue 18).

Run: .venv/bin/python bench/dicomweb_bench.py [--runs 3] [--quick]

The router's two senders as a delivery runs them, without the database: `stow.send` (apps/routing/stow.py:
batches of 10 instances or 10 MB, streamed from disk, each instance's outcome read from the answer) to
Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb), and `dicom_send.send` (one association) to the same
Orthanc's DICOM port. Orthanc is started fresh on empty storage for each send (SyncStorageArea true, its
default: fsync per file). Data sets as the ingest benchmark makes them: 1,000 small CT instances (39 KB) and
a 200-slice 512x512 CT (105 MB); 100 and 20 with --quick.

The figure is STOW-RS throughput over C-STORE throughput (medians of --runs). No goal is set by the issue
for delivery; it is reported. Results go to bench/results/dicomweb.json (dicomweb-quick.json with --quick).
"""

import argparse
import time

from common import (
    RESULTS,
    Orthanc,
    Series,
    code_version,
    machine_info,
    make_datasets,
    run_main,
    scratch,
    settle,
    wait_for_count,
    wipe,
    write_results,
)
from transform_bench import files_of

from apps.routing import dicom_send, stow

SENDERS = ("c-store", "stow-rs")


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
    parser.add_argument("--runs", type=int, default=None, help="runs per data set and sender (3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="100 small instances and 20 CT slices")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    output = RESULTS / ("dicomweb-quick.json" if args.quick else "dicomweb.json")
    work = scratch("dicomweb-bench-")
    (work / "logs").mkdir()
    datasets = make_datasets(work / "data", quick=args.quick)
    seconds = {(d.name, k): Series() for d in datasets for k in SENDERS}
    try:
        for data in datasets:
            files = files_of(data)
            for run in range(runs):
                for kind in SENDERS if run % 2 == 0 else SENDERS[::-1]:
                    elapsed = one_send(kind, files, work)
                    seconds[data.name, kind].values.append(elapsed)
                    rate = data.throughput(elapsed)
                    print(f"{data.name:6} run {run + 1}/{runs} {kind:8} {elapsed:7.2f} s {rate:8.1f} {data.unit}")
    finally:
        wipe(work)
    figures = {}
    print(f"\n{'data':8}{'C-STORE':>14}{'STOW-RS':>14}{'ratio':>8}")
    for data in datasets:
        plain = data.throughput(seconds[data.name, "c-store"].median)
        web = data.throughput(seconds[data.name, "stow-rs"].median)
        figures[data.name] = {
            "unit": data.unit,
            "c_store": round(plain, 2),
            "stow_rs": round(web, 2),
            "stow_over_c_store": round(web / plain, 3),
            "seconds": {k: [round(s, 3) for s in seconds[data.name, k].values] for k in SENDERS},
        }
        print(f"{data.name:8}{plain:14.1f}{web:14.1f}{web / plain:8.2f}")
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
