"""Cost of transforming one instance (apps/transforms), beside copying its file, on a small CT (CT_small,
39 KB) and a 512x512 CT slice (525 KB). Prints medians; the delivery benchmark proper comes with the
integration (issue 17: transformed sending within 1.3x of plain sending).

    .venv/bin/python bench/transform_timing.py
"""

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps.transforms.engine import Operation, Profile, transform  # noqa: E402

SECRET = b"bench-secret-0123456789abcdef"
RUNS = 200
PROFILES = {
    "coercion (prefix + set)": Profile(
        "site",
        operations=(
            Operation("prefix", "AccessionNumber", "NE-"),
            Operation("set", "InstitutionName", "North East Imaging"),
        ),
    ),
    "de-identification": Profile(
        "research", deidentify=True, options=frozenset({"retain_longitudinal_modified_dates"})
    ),
}


def slice_512(folder: Path) -> Path:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 512
    ds.PixelData = np.random.default_rng(1).integers(0, 2000, (512, 512), dtype=np.int16).tobytes()
    path = folder / "ct512.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def median_ms(action, folder: Path) -> float:
    """`action(target)` with a new target each time, as a delivery writes its copies: renaming over an
    existing file makes ext4 flush it (auto_da_alloc), which no delivery pays."""
    folder.mkdir()
    action(folder / "warm.dcm")
    times = []
    for number in range(RUNS):
        target = folder / f"{number}.dcm"
        start = time.perf_counter()
        action(target)
        times.append(time.perf_counter() - start)
    shutil.rmtree(folder)
    return statistics.median(times) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        sources = {"CT_small 39 KB": Path(get_testdata_file("CT_small.dcm")), "CT 512x512": slice_512(folder)}
        for label, source in sources.items():
            copy = median_ms(lambda target, source=source: shutil.copyfile(source, target), folder / "copies")
            print(f"{label}: file copy {copy:.3f} ms")
            for name, profile in PROFILES.items():
                cost = median_ms(
                    lambda target, source=source, profile=profile: transform(source, target, profile, SECRET),
                    folder / "out",
                )
                print(f"  {name}: {cost:.2f} ms per instance")


if __name__ == "__main__":
    main()
