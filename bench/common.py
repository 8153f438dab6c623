"""What the benchmarks share: data sets, the three receivers, timing and results (ingest and routing),
plus what latency, backlog and memory add: studies by the thousand, a study's progress read from the
router's database, the router's worker roles started apart from its SCP, and peak memory from /proc.

Every receiver is a real process started fresh for each run on empty storage (and, for the router, an
empty database), so no run sees what an earlier one left. The router is started with the Procfile's
commands, as the tests start it; Orthanc with its own configuration; dcmtk's storescp as the plain peer.
"""

import abc
import contextlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import procfile  # noqa: E402
from tests.support.dicom import shipped, synthetic_study  # noqa: E402
from tests.support.processes import (  # noqa: E402
    BIN,
    Process,
    dcmtk,
    free_port,
    python_manage,
    wait_until,
)

ORTHANC = "/usr/sbin/Orthanc"
RESULTS = ROOT / "bench" / "results"
CALLING_AE = "MODALITY"
DESTINATION_AE = "DEST"
NODELAY = {"TCP_NODELAY": "1"}  # Debian's dcmtk (storescu, storescp, Orthanc) leaves Nagle on without it

# The router's throwaway databases: migrated once into the template, copied for every run.
DB_TEMPLATE = "router_bench_template"
DB_RUN = "router_bench"


# --- data -----------------------------------------------------------------------------------------


@dataclass
class DataSet:
    name: str
    unit: str  # what its throughput is counted in: "instances/s" or "MB/s"
    paths: list[Path]
    studies: int
    megabytes: float = 0.0  # the files' sizes, in 10^6 bytes

    def __post_init__(self) -> None:
        self.megabytes = sum(p.stat().st_size for p in self.paths) / 1e6

    @property
    def count(self) -> int:
        return len(self.paths)

    def throughput(self, seconds: float) -> float:
        return (self.count if self.unit == "instances/s" else self.megabytes) / seconds

    def describe(self) -> dict:
        return {"instances": self.count, "studies": self.studies, "megabytes": round(self.megabytes, 2)}


def small_studies(folder: Path, *, studies: int, per_study: int) -> DataSet:
    """`studies` studies of `per_study` CT_small instances (~39 KB each), new UIDs, as the tests build them."""
    parts = ["HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE"]
    paths: list[Path] = []
    for n in range(studies):
        _, made = synthetic_study(folder / f"study{n:03d}", count=per_study, body_part=parts[n % len(parts)])
        paths += made
    return DataSet("small", "instances/s", paths, studies)


def ct_study(folder: Path, *, count: int, size: int = 512) -> DataSet:
    """One CT series of `count` slices, size x size, 16-bit signed, uncompressed (512 KB of pixels each).

    The header is CT_small's with new UIDs and geometry; the pixels are a synthetic phantom (an ellipse of
    soft tissue with a denser disc and noise), different on every slice, so nothing is trivially repeated.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rnd = np.random.default_rng(20240304)
    y, x = np.mgrid[0:size, 0:size]
    body = ((x - size / 2) / (size * 0.42)) ** 2 + ((y - size / 2) / (size * 0.34)) ** 2 <= 1
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = dcmread(shipped("ct"))
        del ds[0xFFFCFFFC]  # storescu drops trailing padding; without it the file is what travels
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.BodyPartExamined = "CHEST"
        ds.AccessionNumber = f"ACC{study_uid[-6:]}"
        ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * number]
        ds.SliceLocation = -1.25 * number
        ds.SliceThickness = 1.25
        ds.PixelSpacing = [0.977, 0.977]
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        radius = size * (0.08 + 0.04 * np.sin(number / 15))
        disc = (x - size * 0.45) ** 2 + (y - size * 0.5) ** 2 <= radius**2
        pixels = np.where(body, 1064, 24) + np.where(disc, 300, 0) + rnd.normal(0, 12, (size, size))
        ds.PixelData = pixels.astype("<i2").tobytes()
        ds["PixelData"].VR = "OW"
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return DataSet("ct", "MB/s", paths, 1)


def make_datasets(folder: Path, *, quick: bool) -> list[DataSet]:
    if quick:
        return [small_studies(folder / "small", studies=5, per_study=20), ct_study(folder / "ct", count=20)]
    return [small_studies(folder / "small", studies=50, per_study=20), ct_study(folder / "ct", count=200)]


# --- the sender -------------------------------------------------------------------------------------


def storescu(port: int, data: DataSet, *, called: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """dcmtk's storescu: one association, every file of the data set, only the contexts they need (-R)."""
    args = [dcmtk("storescu"), "-R", "-aet", CALLING_AE, "-aec", called, "127.0.0.1", str(port)]
    args += [str(p) for p in data.paths]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **NODELAY})


def storescu_checked(port: int, data: DataSet, *, called: str) -> float:
    """Send, and return storescu's wall time; any failed C-STORE stops the benchmark."""
    started = time.perf_counter()
    result = storescu(port, data, called=called)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or re.search(r"(?m)^E: ", result.stderr + result.stdout):
        raise RuntimeError(f"storescu to {called} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


# --- PostgreSQL and Redis for the router ---------------------------------------------------------


def _postgres(sql: str, admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


class RouterDatabase:
    """A template migrated once (plus whatever `prepare` adds), and a fresh copy of it for every run."""

    def __init__(self, admin_url: str, log_dir: Path, *, name: str = DB_RUN) -> None:
        # `name`: the run's database (its template is `name`_template), so that two benchmarks on one
        # PostgreSQL (two engineers, two worktrees) never drop each other's.
        self.admin_url = admin_url
        self.log_dir = log_dir
        self.run_name = name
        self.template_name = DB_TEMPLATE if name == DB_RUN else f"{name}_template"
        self.template_url = database_url(admin_url, self.template_name)
        self.url = database_url(admin_url, name)

    def create_template(self, env: dict, prepare: Callable[[dict], None] | None = None) -> None:
        self.drop()
        _postgres(f"CREATE DATABASE {self.template_name}", self.admin_url)
        env = {**env, "DATABASE_URL": self.template_url}
        release = procfile.command("release")  # python manage.py migrate --noinput
        with open(self.log_dir / "migrate.log", "ab") as log:
            subprocess.run(release, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=600)
        if prepare:
            prepare(env)

    def fresh(self) -> str:
        _postgres(f"DROP DATABASE IF EXISTS {self.run_name} WITH (FORCE)", self.admin_url)
        _postgres(f"CREATE DATABASE {self.run_name} TEMPLATE {self.template_name}", self.admin_url)
        return self.url

    def count(self, sql: str) -> int:
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql).fetchone()[0]

    def drop(self) -> None:
        for name in (self.run_name, self.template_name):
            _postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", self.admin_url)


def redis_flush(broker_url: str) -> None:
    """Empty the benchmark's own Redis database (the broker URL's number), nothing else."""
    match = re.fullmatch(r"redis://([^:/]+):(\d+)/(\d+)", broker_url)
    if not match:
        raise ValueError(f"expected redis://host:port/db, got {broker_url}")
    host, port, db = match.groups()
    subprocess.run(["redis-cli", "-h", host, "-p", port, "-n", db, "FLUSHDB"], check=True, capture_output=True)


def router_env(*, database_url_: str, broker_url: str, folder: Path) -> dict:
    """The router's environment, as the tests' service_env builds it, with production's defaults otherwise."""
    (folder / "var").mkdir(parents=True, exist_ok=True)  # Beat's schedule file goes there
    return {
        **os.environ,
        "DATABASE_URL": database_url_,
        "CELERY_BROKER_URL": broker_url,
        "STORAGE_ROOT": str(folder / "storage"),
        "ROUTER_VAR_DIR": str(folder / "var"),
        "EMAIL_FILE_PATH": str(folder / "mail"),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        **NODELAY,
    }


# --- receivers ---------------------------------------------------------------------------------------


class Receiver(abc.ABC):
    """A DICOM receiver started for one run; `count()` says how many instances it holds."""

    name = ""
    ae_title = ""
    port = 0

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def stop(self) -> None: ...


class StoreSCP(Receiver):
    """dcmtk's storescp writing every instance to a folder (no fsync), accepting every transfer syntax."""

    name = "storescp"

    def __init__(
        self,
        folder: Path,
        log_dir: Path,
        *,
        ae_title: str = "STORESCP",
        port: int | None = None,
        fork: bool = False,
        options: tuple[str, ...] = (),
        name: str | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.folder = folder
        if name:
            self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # --fork: one process per association, so concurrent associations are served as a PACS serves them.
        # `options`: more of storescp's own (memory_bench adds +B, bit-preserving: written as it arrives).
        args = [dcmtk("storescp"), "+xa", *(["--fork"] if fork else []), *options, "-aet", ae_title]
        args += ["-od", str(folder)]
        args.append(str(self.port))
        self.process = Process(f"storescp-{ae_title}", args, env={**os.environ, **NODELAY}, log_dir=log_dir)
        self.process.wait_for_port(self.port)

    def count(self) -> int:
        with os.scandir(self.folder) as entries:
            return sum(1 for _ in entries)

    def stop(self) -> None:
        self.process.stop()


class PynetdicomSCP(Receiver):
    """bench/pynetdicom_scp.py: pynetdicom's least storage SCP (fsync per file), the library's own floor."""

    name = "pynetdicom"
    ae_title = "PYNETDICOM"

    def __init__(self, folder: Path, log_dir: Path) -> None:
        self.folder = folder
        self.port = free_port()
        args = [sys.executable, str(Path(__file__).parent / "pynetdicom_scp.py"), str(self.port), str(folder)]
        self.process = Process("pynetdicom-scp", args, env=dict(os.environ), log_dir=log_dir)
        self.process.wait_for_port(self.port)

    def count(self) -> int:
        with os.scandir(self.folder) as entries:
            return sum(1 for _ in entries)

    def stop(self) -> None:
        self.process.stop()


LUA_FORWARD = """
-- Forward every instance Orthanc stores to the destination, as an auto-routing Orthanc does.
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'destination')
end
"""


class Orthanc(Receiver):
    """Orthanc with its own configuration and storage; with `forward_to`, a Lua script auto-forwards."""

    name = "orthanc"

    def __init__(
        self,
        folder: Path,
        log_dir: Path,
        *,
        forward_to: tuple[str, int] | None = None,
        dicomweb: bool = False,
        extra: dict | None = None,
        port: int | None = None,
        modalities: dict[str, list] | None = None,
    ) -> None:
        self.ae_title = "ORTHANC"
        self.port = port or free_port()
        self.http_port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config: dict = {
            "Name": "bench",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            # With `dicomweb`, Debian's orthanc-dicomweb plugin (STOW-RS at /dicom-web/studies).
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
            # Orthanc's default since 1.7.4, stated: each stored file is fsync'ed before the answer.
            "SyncStorageArea": True,
        }
        # `modalities`: peers it knows, e.g. the router, to which it sends storage commitment reports.
        config["DicomModalities"] = dict(modalities or {})
        if forward_to:
            ae_title, forward_port = forward_to
            script = folder / "forward.lua"
            script.write_text(LUA_FORWARD)
            config["DicomModalities"]["destination"] = [ae_title, "127.0.0.1", forward_port]
            config["LuaScripts"] = [str(script)]
        config.update(extra or {})  # qr_bench: the modalities that may move and be moved to
        path = folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.process = Process("orthanc", [ORTHANC, str(path)], env={**os.environ, **NODELAY}, log_dir=log_dir)
        self.process.wait_for_port(self.port)
        self.process.wait_for_port(self.http_port)

    def count(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/statistics", timeout=10) as response:
            return json.load(response)["CountInstances"]

    def stop(self) -> None:
        self.process.stop(timeout=30)  # Orthanc takes ~3.5 s to stop after SIGTERM


class Router(Receiver):
    """Ours: `runscp` from the Procfile (and, for routing, its worker roles) on a fresh database."""

    name = "router"

    def __init__(
        self,
        env: dict,
        log_dir: Path,
        *,
        db: RouterDatabase,
        workers: tuple[str, ...] = (),
        beat: bool = False,
        port: int | None = None,
    ) -> None:
        self.ae_title = "ROUTER"
        self.db = db
        self.port = port or free_port()
        self.workers: list[Process] = []
        self.scp: Process | None = None
        try:
            for role in workers:
                worker = Process(role, procfile.command(role), env=env, log_dir=log_dir)
                self.workers.append(worker)
            if beat:  # its schedule file goes to ROUTER_VAR_DIR, this run's own folder
                self.workers.append(Process("beat", procfile.command("beat"), env=env, log_dir=log_dir))
            for worker in self.workers:
                worker.wait_for_log("beat: Starting" if worker.name == "beat" else "ready.", timeout=120)
            command = procfile.command("scp", "--host", "127.0.0.1", "--port", str(self.port))
            self.scp = Process("scp", command, env=env, log_dir=log_dir)
            self.scp.wait_for_port(self.port)
        except BaseException:
            self.stop()
            raise

    def count(self) -> int:
        return self.db.count("SELECT count(*) FROM studies_receivedinstance")

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()
        for worker in self.workers:
            worker.stop(timeout=60)


# --- runs, medians, results ----------------------------------------------------------------------------


@dataclass
class Series:
    """One figure measured over several runs."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def scratch(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def wipe(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _cpu_idle_fraction(window: float) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(window)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(total1 - total0, 1)


def settle(*, minimum: float = 1.0, maximum: float = 15.0, idle: float = 0.8) -> float:
    """Wait until the machine is quiet again after starting processes (imports, forks, connections):
    at least `minimum` seconds, then until the CPUs are `idle` over 250 ms, at most `maximum` seconds.
    Returns the idle fraction last seen, recorded with each run: other load on the machine shows there."""
    started = time.perf_counter()
    time.sleep(minimum)
    quiet = _cpu_idle_fraction(0.25)
    while time.perf_counter() - started < maximum and quiet < idle:
        quiet = _cpu_idle_fraction(0.25)
    return quiet


def wait_for_count(receiver: Receiver, expected: int, *, timeout: float, interval: float = 0.02) -> float:
    """Poll until the receiver holds `expected` instances; returns the perf_counter time it was seen."""

    def done() -> float | None:
        return time.perf_counter() if receiver.count() >= expected else None

    return wait_until(done, timeout=timeout, interval=interval, what=f"{expected} instances at {receiver.name}")


def _version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def machine_info(admin_url: str | None = None) -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    import pydicom
    import pynetdicom

    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(mem_kb / 1e6, 1),
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "dcmtk": _version([dcmtk("storescu"), "--version"]),
        "orthanc": _version([ORTHANC, "--version"]),
        "redis": _version(["redis-server", "--version"]),
    }
    info["code"] = code_version()
    if admin_url:
        import psycopg

        with psycopg.connect(admin_url) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    return info


def code_version() -> dict:
    """The commit measured, and the files of the application that differed from it (uncommitted work)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    changed = [path for path in changed if not path.startswith(("bench/", "docs/BENCHMARKS.md"))]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_changes": changed}


def write_results(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def default_admin_url() -> str:
    user = os.environ.get("PGUSER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    return os.environ.get("BENCH_POSTGRES_URL", f"postgresql://{user}@127.0.0.1:5432/postgres")


def common_arguments(parser) -> None:
    parser.add_argument("--runs", type=int, default=None, help="runs per system and data set (3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 small instances and 20 CT slices")
    parser.add_argument("--postgres", default=default_admin_url(), help="a PostgreSQL URL allowed to create databases")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9", help="Redis for the router (flushed)")
    parser.add_argument("--database", default=DB_RUN, help=f"the router's run database, dropped at the end ({DB_RUN})")
    parser.add_argument("--output", type=Path, default=None, help="the results file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, data) after the run")


# --- latency, backlog and memory: studies by the thousand, the pipeline's progress, peak memory -------


@dataclass
class BenchStudy:
    """One study made for a run: its UID, its files and their SOP Instance UIDs."""

    uid: str
    paths: list[Path]
    sop_uids: list[str]

    def dataset(self, name: str = "study") -> DataSet:
        return DataSet(name, "instances/s", self.paths, 1)


def ct_small_studies(
    folder: Path, *, studies: int, per_study: int, priority: str = "", body_parts: tuple[str, ...] = ("HEAD",)
) -> list[BenchStudy]:
    """`studies` studies of `per_study` CT_small instances (~39 KB), new UIDs, as `synthetic_study` makes
    them (tests/support/dicom.py), but CT_small is read once: 20,000 instances take a minute, not three.
    With `priority`, every instance says it (RequestedProcedurePriority); body parts rotate."""
    ds = dcmread(shipped("ct"))
    del ds[0xFFFCFFFC]  # storescu drops trailing padding; without it the file is what travels
    made = []
    for n in range(studies):
        study_uid, series_uid = generate_uid(), generate_uid()
        place = folder / f"study{n:04d}"
        place.mkdir(parents=True, exist_ok=True)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.BodyPartExamined = body_parts[n % len(body_parts)]
        ds.Modality = "CT"
        ds.PatientName = "Doe^Jane"
        ds.AccessionNumber = f"ACC{study_uid[-6:]}"
        if priority:
            ds.RequestedProcedurePriority = priority
        paths, uids = [], []
        for number in range(1, per_study + 1):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = number
            path = place / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            uids.append(str(ds.SOPInstanceUID))
        made.append(BenchStudy(study_uid, paths, uids))
    return made


# The neuroradiologist of tests/support/config.py (ACHEN_ON_SHIFT), on shift around the clock, whose capacity
# (20 units of open work by default) is raised so that every study of a benchmark can be assigned to her:
# nobody reports in a benchmark, and a reader at capacity would leave studies unassigned, not slower.
READER_ON_SHIFT = """
radiologists:
  - username: achen
    name: A. Chen
    email: achen@example.org
    specialty: neuroradiology
    capacity: 1000000
    shifts: [{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", timezone: UTC}]
"""


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile: the smallest value at least p % of the values are not above
    (p95 of 30 runs is the 29th smallest, the second largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def router_roles(env: dict, log_dir: Path, roles: tuple[str, ...], *, beat: bool, wait: bool = True) -> list[Process]:
    """Start the Procfile's worker roles (and Beat) as Router does, without the SCP; with `wait`, until
    each is ready. For a router whose SCP runs alone first (backlog_bench: the workers start later)."""
    started: list[Process] = []
    try:
        for role in (*roles, *(("beat",) if beat else ())):
            started.append(Process(role, procfile.command(role), env=env, log_dir=log_dir))
        if wait:
            roles_ready(started)
    except BaseException:
        for process in started:
            process.stop(timeout=60)
        raise
    return started


def roles_ready(processes: list[Process], timeout: float = 120) -> None:
    for process in processes:
        process.wait_for_log("beat: Starting" if process.name == "beat" else "ready.", timeout=timeout)


def router_incidents(logs: Path, roles: tuple[str, ...] = ("scp", "worker", "worker-deliver", "worker-stat", "beat")):
    """The WARNING and ERROR lines the router's processes logged (route_bench keeps its own copy)."""
    found = []
    for role in roles:
        path = logs / f"{role}.log"
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()
            found += [f"{role}: {line[:300]}" for line in lines if re.search(r" (WARNING|ERROR) ", line)]
    return found


# Where a study stands, read straight from the router's tables (the columns study_status reads).
_STUDY_STATE = """
SELECT s.stage,
       EXISTS (SELECT 1 FROM notifications_notification n JOIN reading_assignment a
                 ON n.subject_key = 'assignment:' || a.id
               WHERE a.study_id = s.id AND n.channel = 'in_app')
FROM studies_study s WHERE s.study_instance_uid = %s
"""
_STUDY_TIMELINE = """
SELECT s.id, s.priority, s.stage, s.received_at,
       (SELECT min(r.received_at) FROM studies_receivedinstance r WHERE r.study_instance_uid = s.study_instance_uid),
       (SELECT max(r.received_at) FROM studies_receivedinstance r WHERE r.study_instance_uid = s.study_instance_uid),
       (SELECT q.assessed_at FROM studies_qualityassessment q WHERE q.study_id = s.id),
       (SELECT d.decided_at FROM routing_routingdecision d WHERE d.study_id = s.id),
       (SELECT min(d.created_at) FROM routing_delivery d WHERE d.study_id = s.id),
       (SELECT max(d.delivered_at) FROM routing_delivery d WHERE d.study_id = s.id),
       (SELECT min(a.assigned_at) FROM reading_assignment a WHERE a.study_id = s.id),
       (SELECT min(n.created_at) FROM notifications_notification n JOIN reading_assignment a
          ON n.subject_key = 'assignment:' || a.id WHERE a.study_id = s.id AND n.channel = 'in_app'),
       s.stage_changed_at
FROM studies_study s WHERE s.study_instance_uid = %s
"""
TIMELINE_EVENTS = (
    "first_instance_received",
    "last_instance_received",
    "study_registered",  # the Study row: the SCP's hand-over at association end
    "qc_assessed",  # persist, classify and check done
    "routed",  # the routing decision
    "delivery_queued",  # the delivery row
    "delivered",  # the delivery marked delivered, after its association
    "assigned",
    "notified_in_app",
    "stage_changed",  # the last stage change (notified, when the study is done)
)


class StudyWatch:
    """Reads a study's progress from the router's database over one connection (autocommit)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def done(self, study_uid: str) -> bool:
        """Assigned and notified: stage `notified` and the reader's in-app notification row exists."""
        row = self.conn.execute(_STUDY_STATE, (study_uid,)).fetchone()
        return bool(row) and row[0] == "notified" and bool(row[1])

    def stage(self, study_uid: str) -> str | None:
        row = self.conn.execute("SELECT stage FROM studies_study WHERE study_instance_uid = %s", (study_uid,))
        found = row.fetchone()
        return found[0] if found else None

    def timeline(self, study_uid: str, since: float) -> dict:
        """The study's recorded times, in seconds after `since` (a time.time() value; the workers' clock)."""
        row = self.conn.execute(_STUDY_TIMELINE, (study_uid,)).fetchone()
        if not row:
            return {}
        study_id, priority, stage, registered, first, last, *rest = row
        times = dict(zip(TIMELINE_EVENTS, (first, last, registered, *rest), strict=True))
        seconds = {k: (round(v.timestamp() - since, 3) if v else None) for k, v in times.items()}
        return {"study_id": study_id, "priority": priority, "stage": stage, "seconds_after_start": seconds}

    def scalar(self, sql: str, params: tuple = ()):
        return self.conn.execute(sql, params).fetchone()[0]

    def close(self) -> None:
        self.conn.close()


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def proc_status_kb(pid: int, field_name: str) -> int | None:
    """A /proc/<pid>/status figure in kB (VmRSS: now; VmHWM: the peak so far), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `peak_kb` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kb(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kb = max(self.peak_kb, rss)
                self.samples += 1
            self._stop.wait(self.interval)


@contextlib.contextmanager
def workspace(work: Path, db: "RouterDatabase", args, logs: str) -> Iterator[None]:
    """Around a benchmark's runs: on failure keep `work` and say where the logs (`logs`) are; always drop
    the database and flush the broker's Redis database; remove `work` unless --keep."""
    try:
        yield
    except BaseException:
        print(f"failed: the processes' logs are kept in {logs}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        db.drop()
        redis_flush(args.broker)
        if not args.keep:
            wipe(work)


def import_config(env: dict, text: str, path: Path) -> None:
    """Import a configuration document into the database `env` names, as an operator would (importconfig)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    command = python_manage("importconfig", str(path))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"importconfig failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-3000:]}")


def run_main(main: Callable[[], int]) -> None:
    """A benchmark script's entry point: run it, say how long it took, exit with its status."""
    started = time.perf_counter()
    code = main()
    print(f"took {time.perf_counter() - started:.0f} s")
    sys.exit(code)
