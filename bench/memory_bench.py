"""Memory benchmark: the receiving process's peak memory while one 1 GB instance arrives.

Run: .venv/bin/python bench/memory_bench.py [--runs 3] [--quick]

One synthetic uncompressed instance, Multi-frame Grayscale Word Secondary Capture, 512x512 16-bit frames,
2,048 of them (1.07 GB of pixel data), Explicit VR Little Endian, built on disk with pydicom a few frames
at a time (the header with pydicom, then the pixel data element written frame block by frame block), is
sent by dcmtk's storescu (one association) to each receiver, started fresh for every run:

- router: the Procfile's `scp` (`manage.py runscp`) on a fresh copy of a migrated PostgreSQL database and
  Redis, no worker (receipt only);
- orthanc: Orthanc with its own configuration (as ingest_bench starts it);
- storescp: dcmtk's `storescp +xa -od DIR` (as ingest_bench starts it);
- storescp +B: the same in bit-preserving mode, which writes the dataset to its file as it arrives: what
  receiving without holding the instance costs (a reference, not a goal's peer).

Measured: the receiving process's VmHWM (peak resident set, /proc/<pid>/status) after the send, and its
VmRSS sampled every 10 ms during it (a check on VmHWM); its VmRSS just before the send is its baseline.

Goal (issue 8): the router's peak under 200 MB (10^6 bytes). Ratios to Orthanc's and storescp's peaks
are reported. Results go to bench/results/memory.json (memory-quick.json with --quick: a 100 MB instance).
"""

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import (
    RESULTS,
    ROOT,
    DataSet,
    Orthanc,
    Receiver,
    Router,
    RouterDatabase,
    RssSampler,
    StoreSCP,
    common_arguments,
    free_bytes,
    machine_info,
    proc_status_kb,
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
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

GOAL_MB = 200.0
RECEIVERS = ("router", "orthanc", "storescp", "storescp-B")
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
SIDE = 512
FRAME_BYTES = SIDE * SIDE * 2
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian


def big_instance(path: Path, *, megabytes: float) -> int:
    """Write one instance of ~`megabytes` of 16-bit pixel data; returns its frame count. At most a block of
    16 frames (8 MB) is in memory at a time: the header goes through pydicom, the pixel data element is
    written after it by hand (tag, OW, reserved, 32-bit length), block by block."""
    frames = math.ceil(megabytes * 1e6 / FRAME_BYTES)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MULTIFRAME_WORD_SC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Doe^Jane", "BENCH-MEMORY"
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.AccessionNumber = "ACCMEM1"
    ds.Modality = "OT"
    ds.BodyPartExamined = "HEAD"
    ds.StudyDescription = "memory benchmark"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.3
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = np.random.default_rng(20261122)
    length = frames * FRAME_BYTES
    with open(path, "wb") as fh:
        dcmwrite(fh, ds, enforce_file_format=True)
        fh.write(PIXEL_DATA_TAG + b"OW\x00\x00" + length.to_bytes(4, "little"))
        for first in range(0, frames, 16):
            block = min(16, frames - first)
            fh.write(rnd.integers(0, 4096, size=block * SIDE * SIDE, dtype="<u2").tobytes())
    return frames


def router_streams_to_disk() -> bool:
    """Whether the SCP's source, as it stands, asks pynetdicom to write received datasets to a file
    (_config.STORE_RECV_CHUNKED_DATASET) rather than accumulate them in memory: recorded, not relied on."""
    return any("STORE_RECV_CHUNKED_DATASET" in p.read_text() for p in (ROOT / "apps" / "ingest").rglob("*.py"))


def start(name: str, folder: Path, logs: Path, *, db: RouterDatabase, broker: str) -> tuple[Receiver, int]:
    """The receiver, started fresh, and the pid of its receiving process."""
    if name == "router":
        db.fresh()
        redis_flush(broker)
        router = Router(router_env(database_url_=db.url, broker_url=broker, folder=folder), logs, db=db)
        return router, router.scp.pid
    if name == "orthanc":
        orthanc = Orthanc(folder, logs)
        return orthanc, orthanc.process.pid
    options = ("+B",) if name == "storescp-B" else ()
    storescp = StoreSCP(folder / "out", logs, options=options, ae_title="STORESCPB" if options else "STORESCP")
    return storescp, storescp.process.pid


@dataclass
class Run:
    peak_mb: float  # VmHWM after the send
    sampled_peak_mb: float  # the largest VmRSS sampled every 10 ms during the send
    baseline_mb: float  # VmRSS just before the send
    seconds: float  # storescu's wall time
    idle: float


def kb_to_mb(kb: int | None) -> float:
    return round((kb or 0) * 1024 / 1e6, 1)


def one_run(name: str, data: DataSet, work: Path, *, db: RouterDatabase, broker: str) -> Run:
    folder = work / name
    logs = work / "logs"
    receiver, pid = start(name, folder, logs, db=db, broker=broker)
    try:
        quiet = settle(maximum=10)
        baseline = proc_status_kb(pid, "VmRSS")
        with RssSampler(pid) as sampler:
            seconds = storescu_checked(receiver.port, data, called=receiver.ae_title)
            time.sleep(1.0)  # what the receiver does once the association has ended (the router: hand-over)
        peak = proc_status_kb(pid, "VmHWM")
        held = receiver.count()
        if held != data.count:
            raise RuntimeError(f"{name} holds {held} instances, {data.count} sent")
        return Run(kb_to_mb(peak), kb_to_mb(sampler.peak_kb), kb_to_mb(baseline), seconds, quiet)
    finally:
        receiver.stop()
        wipe(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--megabytes", type=float, default=None, help="pixel data, 10^6 bytes (1074; quick 100)")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    megabytes = args.megabytes or (100 if args.quick else 2048 * FRAME_BYTES / 1e6)
    output = args.output or RESULTS / ("memory-quick.json" if args.quick else "memory.json")

    work = scratch("memory-bench-")
    # The file, one receiver's copy of it, the router's free-space watermark (1 GB by default), a margin.
    needed = 2 * megabytes * 1e6 + 1e9 + 2e9
    available = free_bytes(work)
    if available < needed:
        wipe(work)
        sys.exit(f"not enough free disk space in {work.parent}: {needed / 1e9:.1f} GB needed, {available / 1e9:.1f}")
    (work / "logs").mkdir()
    db = RouterDatabase(args.postgres, work / "logs", name=args.database)
    print(f"scratch folder {work} ({available / 1e9:.0f} GB free); building a {megabytes:.0f} MB instance", flush=True)
    built = time.perf_counter()
    path = work / "data" / "big.dcm"
    frames = big_instance(path, megabytes=megabytes)
    data = DataSet("big", "MB/s", [path], 1)
    print(f"{frames} frames, {data.megabytes:.0f} MB on disk, built in {time.perf_counter() - built:.0f} s", flush=True)
    streams = router_streams_to_disk()
    result: dict = {
        "benchmark": "memory",
        "machine": machine_info(args.postgres),
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "broker": args.broker,
            "instance": {
                "sop_class": "Multi-frame Grayscale Word Secondary Capture Image Storage",
                "transfer_syntax": "Explicit VR Little Endian",
                "frames": frames,
                "rows": SIDE,
                "columns": SIDE,
                "bits_allocated": 16,
                "file_megabytes": round(data.megabytes, 1),
            },
            "sender": "storescu, 1 association",
            "measure": "VmHWM of the receiving process after the send; VmRSS sampled every 10 ms as a check",
            "megabyte": "10^6 bytes",
            "router_scp_streams_to_disk": streams,
        },
    }
    measured: dict[str, list[Run]] = {name: [] for name in RECEIVERS}
    with workspace(work, db, args, logs=f"{work / 'logs'}"):
        db.create_template(router_env(database_url_=db.template_url, broker_url=args.broker, folder=work / "tmpl"))
        for n in range(runs):
            order = RECEIVERS[n % len(RECEIVERS) :] + RECEIVERS[: n % len(RECEIVERS)]
            for name in order:
                done = one_run(name, data, work, db=db, broker=args.broker)
                measured[name].append(done)
                print(
                    f"run {n + 1}/{runs} {name:10} peak {done.peak_mb:8.1f} MB (sampled {done.sampled_peak_mb:8.1f}, "
                    f"before the send {done.baseline_mb:6.1f}); storescu {done.seconds:6.2f} s; "
                    f"CPUs {done.idle:.0%} idle before",
                    flush=True,
                )

    figures = {}
    for name in RECEIVERS:
        series = measured[name]
        figures[name] = {
            "peak_mb": [r.peak_mb for r in series],
            "median_peak_mb": round(statistics.median(r.peak_mb for r in series), 1),
            "sampled_peak_mb": [r.sampled_peak_mb for r in series],
            "baseline_mb": [r.baseline_mb for r in series],
            "median_growth_mb": round(statistics.median(r.peak_mb - r.baseline_mb for r in series), 1),
            "seconds_storescu": [round(r.seconds, 2) for r in series],
            "cpu_idle_before": [round(r.idle, 2) for r in series],
        }
    ours = figures["router"]["median_peak_mb"]
    met = ours < GOAL_MB
    ratios = {peer: round(ours / figures[peer]["median_peak_mb"], 2) for peer in RECEIVERS[1:]}
    result["results"] = {
        "receivers": figures,
        "ratio_router_peak_over": ratios,
        "router_peak_over_instance_size": round(ours / data.megabytes, 2),
    }
    result["goal"] = {"router_peak_under_mb": GOAL_MB, "median_peak_mb": ours, "met": met}
    print()
    print(f"{'receiver':12}{'peak MB':>10}{'growth MB':>11}")
    for name in RECEIVERS:
        print(f"{name:12}{figures[name]['median_peak_mb']:10.1f}{figures[name]['median_growth_mb']:11.1f}")
    print("router's peak over: " + ", ".join(f"{peer} {r:.2f}x" for peer, r in ratios.items()))
    print(f"router's SCP streams to disk (from its source): {streams}")
    print(f"goal: router's peak {ours:.1f} MB < {GOAL_MB:g} MB: {'met' if met else 'NOT met'}")
    write_results(output, result)
    return 0 if met else 1


if __name__ == "__main__":
    run_main(main)
