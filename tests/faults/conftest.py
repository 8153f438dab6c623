"""Fixtures and checks for the fault-injection tests: a Redis of the test's own that can be killed and
started again on the same port, a slow destination, and the exactly-once checks every fault test ends with."""

import email
import os
import re
import shutil
import signal
import time
from collections import Counter
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from apps.notifications.models import Notification
from apps.reading.models import Assignment, EscalationStep, SlaEvent
from apps.routing.models import Delivery, DeliveryItem

from ..support.peers import StatusSCP
from ..support.processes import Process, free_port


class PrivateRedis:
    """redis-server on a free port, without persistence: a restart comes back empty, every queued message
    lost. Stopped and started by its own pid, always at the same port."""

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make test installs it)", pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.log_dir = log_dir
        self.process: Process | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> "PrivateRedis":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = Process(
            f"redis{self.starts}", [*args, "--daemonize", "no"], env=dict(os.environ), log_dir=self.log_dir
        )
        self.starts += 1
        self.process.wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown, nothing saved."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL, timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def private_redis(log_dir):
    redis = PrivateRedis(log_dir).start()
    yield redis
    redis.stop()


@pytest.fixture
def broker_env(service_env, private_redis, settings) -> dict:
    """service_env with the private Redis as the broker, for the SCP, the workers and Beat (and this
    process, should it publish)."""
    settings.CELERY_BROKER_URL = private_redis.url()
    return {**service_env, "CELERY_BROKER_URL": private_redis.url()}


class Supervisor:
    """Starts again any worker that exits, as production does (docker-compose: restart unless-stopped), and
    remembers which died: a test checks first what the system did, then that no worker died."""

    def __init__(self, start_worker, env: dict, workers: list[Process]) -> None:
        self.start_worker = start_worker
        self.env = env
        self.running = list(workers)
        self.started = list(workers)

    def check(self) -> None:
        for proc in list(self.running):
            if not proc.alive():
                self.running.remove(proc)
                role = proc.name.rstrip("0123456789")
                started = self.start_worker(self.env, purge=False, roles=(role,))
                self.running += started
                self.started += started

    def deaths(self) -> list[str]:
        """Each worker that died or is dying (Celery's "Unrecoverable error" ends the worker once its running
        tasks are done), with the reason it gave."""
        dead = []
        for proc in self.started:
            fatal = [line for line in proc.log().splitlines() if "Unrecoverable error" in line]
            if fatal or not proc.alive():
                dead.append(f"{proc.name}: {fatal[0] if fatal else f'exited with {proc.popen.returncode}'}")
        return dead


class SlowSCP(StatusSCP):
    """A destination that takes `delay` seconds to answer each C-STORE; `received` lists every copy that
    arrived (a duplicate shows twice), `folder` keeps one file per SOP Instance UID."""

    def __init__(self, *, delay: float, ae_title: str = "PACS", folder: Path | None = None) -> None:
        super().__init__(ae_title=ae_title, folder=folder)
        self.store_delay = delay
        self.arrivals: list[tuple[float, int, str]] = []  # (time, association, SOP Instance UID): what came when

    def copies(self) -> Counter:
        return Counter(self.received)

    def duplicates(self) -> str:
        """When and over which association each instance received twice arrived: for a failure message."""
        if not self.arrivals:
            return ""
        start = self.arrivals[0][0]
        numbers = {assoc: n for n, assoc in enumerate(dict.fromkeys(a for _, a, _ in self.arrivals), 1)}
        twice = {uid for uid, n in self.copies().items() if n > 1}
        lines = [
            f"...{uid[-8:]} at +{at - start:.2f}s on association {numbers[assoc]}"
            for at, assoc, uid in self.arrivals
            if uid in twice
        ]
        return f"{len(numbers)} associations; arrivals of those: " + "; ".join(lines)

    def _store(self, event) -> int:
        self.arrivals.append((time.time(), id(event.assoc), str(event.request.AffectedSOPInstanceUID)))
        time.sleep(self.store_delay)
        return super()._store(event)


# storescp (-uf) names each file after its SOP Instance UID (prefixed by the modality) and overwrites a
# second copy, saying so in its log: the files give the set, the log gives the duplicates.
STORESCP_OVERWRITE = re.compile(r"DICOM file already exists, overwriting: (\S+)")


def storescp_copies(proc: Process, folder: Path) -> Counter:
    """How many copies of each SOP Instance UID the storescp process received."""
    copies = Counter(path.name.split(".", 1)[1] for path in folder.iterdir())
    for path in STORESCP_OVERWRITE.findall(proc.log()):
        copies[Path(path).name.split(".", 1)[1]] += 1
    return copies


def assert_each_once(copies: Counter, sent: set[str], detail: str = "") -> None:
    """The destination holds every sent instance, and received each exactly once."""
    assert set(copies) == sent, f"missing {sent - set(copies)}, unexpected {set(copies) - sent}"
    twice = {uid: n for uid, n in copies.items() if n > 1}
    assert not twice, f"{len(twice)} of {len(sent)} instances received more than once. {detail}"


def assert_ledger_delivered_once(*, instances: int, deliveries: int) -> None:
    """One delivery per (study, destination), one item per (instance, destination), all delivered."""
    assert Delivery.objects.count() == deliveries
    assert list(Delivery.objects.exclude(state=Delivery.State.DELIVERED).values_list("pk", "state")) == []
    items = DeliveryItem.objects.all()
    assert items.count() == items.values("delivery", "instance").distinct().count() == instances
    assert items.filter(state=DeliveryItem.State.DELIVERED).count() == instances


def assert_nothing_twice() -> None:
    """The idempotency keys hold: one open assignment per study, one escalation per (study, level), one SLA
    event per (assignment, kind), one notification per (event, subject, recipient, channel)."""
    open_assignments = Assignment.objects.filter(status__in=Assignment.OPEN)
    assert open_assignments.count() == open_assignments.values("study").distinct().count()
    steps = EscalationStep.objects.all()
    assert steps.count() == steps.values("study", "level").distinct().count()
    events = SlaEvent.objects.all()
    assert events.count() == events.values("assignment", "kind").distinct().count()
    notifications = Notification.objects.all()
    keys = notifications.values("event", "subject_key", "recipient", "endpoint", "channel").distinct().count()
    assert notifications.count() == keys


def sent_emails(folder: Path) -> Counter:
    """(recipient, subject) of every email Django's file backend wrote: one entry per email sent."""
    sent: Counter = Counter()
    if not folder.exists():
        return sent
    for path in folder.iterdir():
        for chunk in path.read_text(errors="replace").split("-" * 79):
            if not chunk.strip():
                continue
            message = email.message_from_string(chunk.strip())
            subject = str(make_header(decode_header(message.get("Subject", "")))).replace("\n", "")
            sent[(message.get("To", ""), re.sub(r"\s+", " ", subject))] += 1
    return sent


def assert_emails_sent_once(folder: Path) -> None:
    """Each email notification that says it was sent was sent exactly once, and nothing else was."""
    wanted = Counter(
        (n.recipient.email, re.sub(r"\s+", " ", n.title))
        for n in Notification.objects.filter(channel=Notification.Channel.EMAIL, state=Notification.State.SENT)
    )
    assert sent_emails(folder) == wanted
