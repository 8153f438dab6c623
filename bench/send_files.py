"""The router's sender (apps/routing/dicom_send.py) as a process of its own, for route_bench's references.

Run: python bench/send_files.py PORT AE_TITLE FILE...

Reads the files' headers, prints "ready", waits for a line on standard input, sends every file over one
association, prints "sent SECONDS" and exits 0 (1 if any file was not delivered).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402

from apps.routing import dicom_send  # noqa: E402


def main() -> int:
    port, called, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    files = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        files.append(dicom_send.File(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), Path(path)))
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    results = dicom_send.send(dicom_send.Target(called, "127.0.0.1", port, "ROUTER"), files)
    print(f"sent {time.perf_counter() - started:.3f}", flush=True)
    return 0 if all(r.kind == dicom_send.DELIVERED for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
