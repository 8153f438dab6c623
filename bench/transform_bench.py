"""Transform benchmark: what a transform profile costs a delivery, beside sending the originals (issue 17).

Run: .venv/bin/python bench/transform_bench.py [--runs 3] [--quick]

The router's delivery path as `delivery_send` runs it, without the database: `transformed.prepare`'s work
(apps/transforms/engine.py `transform` of every file into a folder) then `dicom_send.send` (the router's only
SCU) of the resulting files over one association, against the same `dicom_send.send` of the stored
originals. The destination is dcmtk's storescp (`+xa -od DIR`, TCP_NODELAY=1), started fresh for each send.
Data sets as the ingest benchmark makes them: 1,000 small CT instances (39 KB) and a 200-slice 512x512 CT
(525 KB each); 100 and 20 with --quick. Profiles:
- site: coercion only (accession prefix, institution set), as a reading site asks;
- research: Annex E de-identification with retained longitudinal (shifted) dates, keyed pseudonyms.

The figure is the time of transform + send over the time of the plain send (median of --runs). Goal: at most
1.3 (a transformed delivery no more than 30 % slower than a plain one).
Results go to bench/results/transform.json (transform-quick.json with --quick).
"""

import argparse
import shutil
import time
from pathlib import Path

from common import (
    RESULTS,
    DataSet,
    Series,
    StoreSCP,
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
from pydicom import dcmread

from apps.routing import dicom_send
from apps.transforms.engine import Operation, Profile, transform

GOAL = 1.3
SECRET = b"bench-secret-0123456789abcdef0123"
PROFILES = {
    "site": Profile(
        "site",
        operations=(
            Operation("prefix", "AccessionNumber", "NE-"),
            Operation("set", "InstitutionName", "North East Imaging"),
        ),
    ),
    "research": Profile("research", deidentify=True, options=frozenset({"retain_longitudinal_modified_dates"})),
}


def files_of(data: DataSet) -> list[dicom_send.File]:
    out = []
    for path in data.paths:
        ds = dcmread(path, stop_before_pixels=True)
        out.append(dicom_send.File(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), path))
    return out


def one_send(files: list[dicom_send.File], work: Path, profile: Profile | None) -> float:
    destination = StoreSCP(work / "dest", work / "logs", ae_title="DEST")
    folder = work / "transformed"
    try:
        settle()
        started = time.perf_counter()
        if profile is not None:  # as transformed.prepare: every file of the attempt, then one association
            folder.mkdir()
            made = []
            for f in files:
                target = folder / f.path.name
                transform(f.path, target, profile, SECRET)
                made.append(dicom_send.File(f.sop_class_uid, f.transfer_syntax_uid, target))
            files = made
        target = dicom_send.Target("DEST", "127.0.0.1", destination.port, "ROUTER")
        results = dicom_send.send(target, files)
        elapsed = time.perf_counter() - started
        if any(r.kind != dicom_send.DELIVERED for r in results):
            raise RuntimeError(f"not every instance was delivered: {results[:3]}")
        wait_for_count(destination, len(files), timeout=60)
        return elapsed
    finally:
        destination.stop()
        wipe(work / "dest")
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per data set and profile (3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="100 small instances and 20 CT slices")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    output = RESULTS / ("transform-quick.json" if args.quick else "transform.json")
    work = scratch("transform-bench-")
    (work / "logs").mkdir()
    datasets = make_datasets(work / "data", quick=args.quick)
    kinds = ("plain", *PROFILES)
    seconds = {(d.name, k): Series() for d in datasets for k in kinds}
    try:
        for data in datasets:
            files = files_of(data)
            for run in range(runs):
                order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
                for kind in order:
                    elapsed = one_send(files, work, PROFILES.get(kind))
                    seconds[data.name, kind].values.append(elapsed)
                    per = elapsed / data.count * 1000
                    print(f"{data.name:6} run {run + 1}/{runs} {kind:9} {elapsed:7.2f} s  {per:6.2f} ms/instance")
    finally:
        if not args.keep:
            wipe(work)
    figures, met = {}, True
    print(f"\n{'data':8}{'profile':10}{'ms/instance':>13}{'x plain':>9}")
    for data in datasets:
        plain = seconds[data.name, "plain"].median
        figures[data.name] = {"instances": data.count}
        for kind in kinds:
            median = seconds[data.name, kind].median
            ratio = median / plain
            figures[data.name][kind] = {
                "seconds": [round(s, 3) for s in seconds[data.name, kind].values],
                "ms_per_instance": round(median / data.count * 1000, 3),
                "over_plain": round(ratio, 3),
            }
            if kind != "plain":
                met = met and ratio <= GOAL
            print(f"{data.name:8}{kind:10}{median / data.count * 1000:13.2f}{ratio:9.2f}")
    result = {
        "benchmark": "transform",
        "machine": machine_info(),
        "code": code_version(),
        "parameters": {"runs": runs, "quick": args.quick, "goal_over_plain": GOAL},
        "datasets": {d.name: d.describe() for d in datasets},
        "figures": figures,
        "goal_met": met,
    }
    write_results(output, result)
    return 0 if met else 1


if __name__ == "__main__":
    run_main(main)
