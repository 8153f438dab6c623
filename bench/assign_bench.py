"""Assignment benchmark: one decision among N radiologists with realistic open work.

Reports the time per decision and the number of SQL queries for the router's study_assign against a
naive peer measured in the same run (one query per candidate for its open work and shifts), on the
database DATABASE_URL names (PostgreSQL in production), else a throwaway SQLite file.

    .venv/bin/python bench/assign_bench.py [--radiologists 500] [--decisions 50]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from datetime import time as clock_time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not os.environ.get("DATABASE_URL"):
    os.environ["ROUTER_VAR_DIR"] = tempfile.mkdtemp(prefix="assign-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerproject.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from apps.reading.models import Assignment, Radiologist, Shift  # noqa: E402
from apps.reading.services import study_assign  # noqa: E402
from apps.studies.models import Stage, Study  # noqa: E402

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def populate(radiologists: int) -> None:
    """N neuroradiologists, each with 0-9 open studies (weights 0.3, 1.0, 1.6)."""
    users = User.objects.bulk_create(User(username=f"bench-r{n}") for n in range(radiologists))
    readers = Radiologist.objects.bulk_create(
        Radiologist(user=u, display_name=u.username, specialty="neuroradiology", capacity=40.0, seniority=n % 20)
        for n, u in enumerate(users)
    )
    # Every tenth reader works nights only (19:00-07:00): off shift at noon, excluded with a reason.
    Shift.objects.bulk_create(
        Shift(
            radiologist=r,
            weekdays="mon,tue,wed,thu,fri",
            start=clock_time(19) if n % 10 == 0 else clock_time(0),
            end=clock_time(7) if n % 10 == 0 else clock_time(23, 59),
        )
        for n, r in enumerate(readers)
    )
    open_studies = []
    for n, r in enumerate(readers):
        for k in range(n % 10):
            open_studies.append((r, Study(study_instance_uid=f"9.{n}.{k}", workload=(0.3, 1.0, 1.6)[k % 3])))
    Study.objects.bulk_create(s for _, s in open_studies)
    Assignment.objects.bulk_create(Assignment(study=s, radiologist=r) for r, s in open_studies)


def naive_assign(study: Study) -> Radiologist | None:
    """The peer: read every candidate's open work and shifts one at a time."""
    best = None
    for r in Radiologist.objects.filter(specialty=study.specialty, status="online"):
        if not any(s.is_open(NOON) for s in r.shifts.all()):
            continue
        open_count = Assignment.objects.filter(radiologist=r, status__in=Assignment.OPEN).count()
        if best is None or open_count < best[0]:
            best = (open_count, r)
    return best[1] if best else None


def measure(decide, decisions: int) -> tuple[float, int]:
    times, queries = [], []
    for n in range(decisions):
        study = Study.objects.create(
            study_instance_uid=f"8.{decide.__name__}.{n}", specialty="neuroradiology", stage=Stage.ROUTED
        )
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            with transaction.atomic():
                decide(study)
            times.append(time.perf_counter() - started)
        queries.append(len(captured))
    return statistics.median(times), max(queries)


def router(study: Study) -> None:
    assert study_assign(study_id=study.pk, now=NOON) is not None


def naive(study: Study) -> None:
    assert naive_assign(study) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--radiologists", type=int, default=500)
    parser.add_argument("--decisions", type=int, default=50)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    with transaction.atomic():
        populate(args.radiologists)
        results = {name: measure(fn, args.decisions) for name, fn in (("router", router), ("naive", naive))}
        transaction.set_rollback(True)  # leave the database as it was
    for name, (median, queries) in results.items():
        print(f"{name:<8} {median * 1000:8.2f} ms per decision  {queries:5d} queries")
    ratio = results["naive"][0] / results["router"][0]
    print(f"naive/router time: {ratio:.1f}x   database: {connection.vendor}   radiologists: {args.radiologists}")
    out = ROOT / "bench" / "results" / "assign.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                },
                "database": connection.vendor,
                "radiologists": args.radiologists,
                "decisions": args.decisions,
                "router": {"median_ms": round(results["router"][0] * 1000, 3), "queries": results["router"][1]},
                "naive": {"median_ms": round(results["naive"][0] * 1000, 3), "queries": results["naive"][1]},
                "ratio_naive_over_router": round(ratio, 2),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
