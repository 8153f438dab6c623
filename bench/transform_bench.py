"""Transform benchmark: what a transform profile costs a delivery, beside sending the originals (issue 17).

Run: .venv/bin/python bench/transform_bench.py [--runs 3] [--quick]

The router's delivery path as `delivery_send` runs it, without the database: apps/routing/transformed.py's
`prepare_files` (the copies, made by the helper process while the sender sends: apps/transforms/ahead.py),
`dicom_send.send` (the router's only SCU) over one association, `finish` and `clean`; against the same
`dicom_send.send` of the stored originals. Also measured, for the record: the copies made in the delivering
process before the send (TRANSFORM_AHEAD off), as before the helper existed. The helper is started once, as a
delivering process keeps it; its start-up is reported apart. The destination is dcmtk's storescp
(`+xa -od DIR`, TCP_NODELAY=1), started fresh for each send. Data sets as the ingest benchmark makes them:
1,000 small CT instances (39 KB) and a 200-slice 512x512 CT (525 KB each); 100 and 20 with --quick. Profiles:
- site: coercion only (accession prefix, institution set), as a reading site asks;
- research: Annex E de-identification with retained longitudinal (shifted) dates, keyed pseudonyms.

The figure is the time of transform + send over the time of the plain send (median of --runs). Goal: at most
1.3 (a transformed delivery no more than 30 % slower than a plain one), for the default (ahead) path.
Results go to bench/results/transform.json (transform-quick.json with --quick).
"""

import argparse
import os
import time
from pathlib import Path

import django
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

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerproject.settings")
django.setup()

from django.conf import settings  # noqa: E402

from apps.routing import dicom_send, transformed  # noqa: E402
from apps.transforms import ahead  # noqa: E402
from apps.transforms.engine import Operation, Profile  # noqa: E402

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


def sources_of(data: DataSet) -> list[transformed.Source]:
    out = []
    for pk, path in enumerate(data.paths, start=1):
        ds = dcmread(path, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
        out.append(transformed.Source(pk, pk, path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), uid))
    return out


def one_send(sources: list[transformed.Source], work: Path, profile: Profile | None, *, in_process: bool) -> float:
    destination = StoreSCP(work / "dest", work / "logs", ae_title="DEST")
    try:
        settle()
        started = time.perf_counter()
        if profile is None:
            files = [dicom_send.File(s.sop_class_uid, s.transfer_syntax_uid, s.path) for s in sources]
            prepared = None
        else:  # as delivery_send: prepare (ahead, or all first), send, finish, clean
            prepared = transformed.prepare_files(profile, SECRET, sources, label="bench", ahead=not in_process)
            files = prepared.files
        target = dicom_send.Target("DEST", "127.0.0.1", destination.port, "ROUTER")
        results = dicom_send.send(target, files)
        if prepared is not None:
            results = prepared.finish(results)
            transformed.clean(prepared)
        elapsed = time.perf_counter() - started
        if len(results) != len(sources) or any(r.kind != dicom_send.DELIVERED for r in results):
            raise RuntimeError(f"not every instance was delivered: {results[:3]}")
        wait_for_count(destination, len(sources), timeout=60)
        return elapsed
    finally:
        destination.stop()
        wipe(work / "dest")


def helper_start_seconds(data: DataSet, work: Path) -> float:
    """The helper's start-up, as a delivering process's first transformed delivery pays it: one file."""
    started = time.perf_counter()
    job = ahead.start([(data.paths[0], work / "first.dcm")], PROFILES["site"], SECRET)
    if job is None or job.next()[0] != "made":
        raise RuntimeError("the transform helper did not start")
    return time.perf_counter() - started


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
    settings.STORAGE_ROOT = work / "storage"
    datasets = make_datasets(work / "data", quick=args.quick)
    kinds = ("plain", *PROFILES, *(f"{p}-in-process" for p in PROFILES))
    seconds = {(d.name, k): Series() for d in datasets for k in kinds}
    try:
        started = helper_start_seconds(datasets[0], work)
        print(f"transform helper started in {started:.3f} s")
        for data in datasets:
            sources = sources_of(data)
            for run in range(runs):
                order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
                for kind in order:
                    profile = PROFILES.get(kind.removesuffix("-in-process"))
                    elapsed = one_send(sources, work, profile, in_process=kind.endswith("-in-process"))
                    seconds[data.name, kind].values.append(elapsed)
                    per = elapsed / data.count * 1000
                    print(f"{data.name:6} run {run + 1}/{runs} {kind:20} {elapsed:7.2f} s  {per:6.2f} ms/instance")
    finally:
        if not args.keep:
            wipe(work)
    figures, met = {}, True
    print(f"\n{'data':8}{'profile':21}{'ms/instance':>13}{'x plain':>9}")
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
            if kind in PROFILES:  # the default path; in-process is for the record
                met = met and ratio <= GOAL
            print(f"{data.name:8}{kind:21}{median / data.count * 1000:13.2f}{ratio:9.2f}")
    result = {
        "benchmark": "transform",
        "machine": machine_info(),
        "code": code_version(),
        "parameters": {"runs": runs, "quick": args.quick, "goal_over_plain": GOAL},
        "helper_start_seconds": round(started, 3),
        "datasets": {d.name: d.describe() for d in datasets},
        "figures": figures,
        "goal_met": met,
    }
    write_results(output, result)
    return 0 if met else 1


if __name__ == "__main__":
    run_main(main)
