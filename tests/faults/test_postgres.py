"""PostgreSQL goes down in the middle of an association. A C-STORE whose row cannot be committed answers
0xA700 (the sender retries), never success, and leaves no file behind; once the database is back the
sender's retry is taken, and each instance is recorded once and reaches its destination once.

The server is the test's own (initdb into a temporary folder, a free port), never the machine's shared one:
the SCP, the workers and Beat use it through DATABASE_URL, and this process reads it with psycopg (its own
Django database is the shared test database, which these processes never see)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from apps.routing.dicom_send import File, Target, send
from apps.routing.models import Delivery, DeliveryItem

from ..support.dicom import storescu, synthetic_study
from ..support.processes import free_port, python_manage, wait_until
from .conftest import assert_each_once, storescp_copies

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700

CONFIG = """
destinations:
  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: %(port)d, retry_base_delay: 1, retry_max_delay: 2}
rules:
  - {name: all CT, priority: 1, match: {modality: CT}, destinations: [pacs]}
"""


def postgres_bin() -> Path:
    """The folder of initdb and postgres: Debian keeps them off the PATH, under their major version."""
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    found = [p.parent for p in folders] or [Path(p).parent for p in [shutil.which("postgres")] if p]
    if not found:
        pytest.fail("PostgreSQL's server binaries are not installed (make test installs them)", pytrace=False)
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL server of the test's own, trust authentication, on a free port of 127.0.0.1; stopped and
    started by its own pid, always on the same port and data folder.

    PostgreSQL refuses to run as root: run as root, the server runs as the `postgres` user, in a folder of
    its own under /tmp (pytest's tmp_path is closed to other users)."""

    def __init__(self, log_dir: Path) -> None:
        self.bin = postgres_bin()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.folder = Path(tempfile.mkdtemp(prefix="router-pg-"))
        if self.user:
            shutil.chown(self.folder, self.user)
        self.port = free_port()
        self.log_path = log_dir / "postgres.log"
        self.process: subprocess.Popen | None = None
        initdb = [str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-U", "router", "--auth=trust"]
        subprocess.run([*initdb, "--no-sync"], user=self.user, check=True, capture_output=True, timeout=60)

    def url(self, database: str = "router") -> str:
        return f"postgres://router@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PrivatePostgres":
        args = [str(self.bin / "postgres"), "-D", str(self.folder / "data"), "-p", str(self.port)]
        args += ["-k", str(self.folder), "-c", "listen_addresses=127.0.0.1"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, user=self.user, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=30, what="the private PostgreSQL to accept connections")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited with {self.process.returncode}:\n{self.log_path.read_text()}")
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def crash(self) -> None:
        """An immediate shutdown (`pg_ctl stop -m immediate`): every connection dropped at once, nothing
        flushed, crash recovery at the next start. SIGKILL would orphan the backends, and this machine's
        init does not reap orphans."""
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # a fast shutdown
            self.process.wait(30)

    def query(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.url(), connect_timeout=5) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def private_postgres(log_dir):
    server = PrivatePostgres(log_dir).start()
    try:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE router")
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


def manage(env: dict, *args: str, stdin: str = "") -> None:
    done = subprocess.run(python_manage(*args), env=env, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def postgres_env(service_env, private_postgres) -> dict:
    """service_env with the private PostgreSQL, migrated, as the database of the SCP, workers and Beat."""
    env = {**service_env, "DATABASE_URL": private_postgres.url()}
    manage(env, "migrate", "--noinput")
    return env


def delivered_once(pg: PrivatePostgres, uids: set[str]) -> bool:
    """The ledger holds one delivery item per instance, each delivered, and nothing else."""
    items = pg.query(
        "SELECT i.sop_instance_uid, d.state FROM routing_deliveryitem d JOIN studies_instance i ON i.id = d.instance_id"
    )
    return sorted(items) == sorted((uid, DeliveryItem.State.DELIVERED) for uid in uids)


def test_postgres_down_mid_association_answers_a700_and_the_retry_is_recorded_and_delivered_once(
    postgres_env, private_postgres, start_scp, start_worker, start_beat, storescp, storage, tmp_path
):
    pg = private_postgres
    pacs, pacs_port, pacs_folder = storescp("PACS")
    manage(postgres_env, "importconfig", "-", stdin=CONFIG % {"port": pacs_port})
    scp, port = start_scp(postgres_env)
    workers = start_worker(postgres_env)
    start_beat(postgres_env)
    _, first = synthetic_study(tmp_path / "first", count=3)
    _, second = synthetic_study(tmp_path / "second", count=6)
    sent = {p.stem for p in first + second}

    assert storescu(port, first).returncode == 0
    wait_until(lambda: delivered_once(pg, {p.stem for p in first}), timeout=30, what="the first study delivered")

    def crash_after_the_third(index: int, _) -> None:
        if index == 2:
            pg.crash()

    # The router's own SCU as the modality, for each answer: the database goes down after 3 of 6 C-STOREs.
    modality = Target(ae_title="ROUTER", host="127.0.0.1", port=port, calling_ae_title="MODALITY")
    files = [File(CTImageStorage, ExplicitVRLittleEndian, p) for p in second]
    results = send(modality, files, on_sent=crash_after_the_third)
    assert [r.status for r in results] == [SUCCESS] * 3 + [OUT_OF_RESOURCES] * 3, results
    # A new association while the database is away: refused too, even the instances already taken.
    assert {r.status for r in send(modality, files)} == {OUT_OF_RESOURCES}
    assert len(list((storage / "instances").rglob("*.dcm"))) == 3 + 3, "a refused instance left its file"
    assert list((storage / "tmp").iterdir()) == []
    time.sleep(2)  # Beat's sweepers (every second) run into the outage meanwhile

    pg.start()
    assert storescu(port, second).returncode == 0  # the modality sends the whole study again
    wait_until(lambda: delivered_once(pg, sent), timeout=30, interval=0.5, what="every instance delivered")
    # Each item is recorded as its answer arrives; the delivery's own state once its association ended. Waited
    # for as `delivered`: a delivery still `pending` (due again after the refused instances) is claimed by the
    # next sweep and goes through `sending` once more before it ends (a CI run read it there).
    states = "SELECT state FROM routing_delivery ORDER BY id"
    wait_until(
        lambda: pg.query(states) == [(Delivery.State.DELIVERED,)] * 2,
        timeout=30,
        interval=0.2,
        what="both deliveries delivered",
    )
    assert_each_once(storescp_copies(pacs, pacs_folder), sent)
    assert pg.query("SELECT state FROM routing_delivery") == [(Delivery.State.DELIVERED,)] * 2
    recorded = pg.query("SELECT sop_instance_uid, path FROM studies_receivedinstance")
    assert sorted(uid for uid, _ in recorded) == sorted(sent)  # each once
    stored = {str(p.relative_to(storage)) for p in (storage / "instances").rglob("*.dcm")}
    assert stored == {path for _, path in recorded}, "a file in storage without its row, or a row without its file"
    assert list((storage / "tmp").iterdir()) == []
    assert scp.alive()
    assert [w.name for w in workers if not w.alive()] == []
