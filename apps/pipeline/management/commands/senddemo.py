"""Send demo studies to the SCP as two sites' modalities would, and follow them to their readers.

Made from the files pydicom ships (CT_small, MR_small) with fresh UIDs and made-up patients; one association
per study. Prints a progress bar while sending and while the router works, then each study's outcome and
the pages to open.
"""

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from apps.pipeline.selectors import study_status
from apps.routing.dicom_send import DELIVERED, File, Target, send

# Stages a study rests in: nothing more happens without a person (or a late instance).
SETTLED_STAGES = {"notified", "unassigned", "held", "rejected"}
SETTLED_DELIVERIES = {"delivered", "failed"}


@dataclass(frozen=True)
class DemoStudy:
    calling_ae_title: str
    source: str
    modality: str
    body_part: str
    description: str
    priority: str
    instances: int


DEMO_STUDIES = (
    DemoStudy("NORTH_CT", "CT_small.dcm", "CT", "HEAD", "CT HEAD STROKE PROTOCOL", "STAT", 4),
    DemoStudy("SOUTH_MR", "MR_small.dcm", "MR", "BRAIN", "MR BRAIN", "ROUTINE", 3),
    DemoStudy("NORTH_CT", "CT_small.dcm", "CT", "CHEST", "CT CHEST", "ROUTINE", 3),
    DemoStudy("NORTH_CT", "CT_small.dcm", "CT", "ABDOMEN", "CT ABDOMEN PELVIS", "HIGH", 3),
)


def demo_files(folder: Path, study: DemoStudy, number: int) -> tuple[str, list[File]]:
    """The study's instances as files in `folder`; returns (Study Instance UID, files)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for index in range(1, study.instances + 1):
        ds = dcmread(get_testdata_file(study.source))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index
        ds.Modality, ds.BodyPartExamined = study.modality, study.body_part
        ds.StudyDescription = ds.SeriesDescription = study.description
        ds.RequestedProcedurePriority = study.priority
        ds.PatientName, ds.PatientID = f"Demo^Patient{number}", f"DEMO{number:04d}"
        ds.AccessionNumber = f"DEMO{number:04d}{int(time.time()) % 100000:05d}"
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(File(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), path))
    return study_uid, files


class Progress:
    """One line redrawn in place on a terminal, a line per step elsewhere (logs, pipes)."""

    def __init__(self, out, label: str, total: int, width: int = 30) -> None:
        self.out, self.label, self.total, self.width = out, label, total, width
        self.tty = out.isatty()
        self.last = ""

    def show(self, done: int, note: str = "") -> None:
        filled = self.width * done // max(self.total, 1)
        line = f"{self.label:<10} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {note}"
        if self.tty:
            self.out.write("\r" + line.ljust(100), ending="")
            self.out.flush()
        elif line != self.last:
            self.out.write(line)
        self.last = line

    def end(self) -> None:
        if self.tty:
            self.out.write("")


def settled(status: dict | None) -> bool:
    if not status or status.get("stage") not in SETTLED_STAGES:
        return False
    return all(d["state"] in SETTLED_DELIVERIES for d in status.get("deliveries", []))


class Command(BaseCommand):
    help = "Send demo studies to the SCP and follow them until routed and assigned (make run's first minute)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.SCP_PORT)
        parser.add_argument("--ae-title", default=settings.SCP_AE_TITLE, help="the SCP's (called) AE title")
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to follow the studies (0: do not)")
        parser.add_argument("--web", default=f"http://127.0.0.1:{os.environ.get('WEB_PORT', '8000')}")

    def handle(self, *args, host: str, port: int, ae_title: str, wait: float, web: str, **options) -> None:
        with tempfile.TemporaryDirectory(prefix="senddemo-") as tmp:
            studies = [demo_files(Path(tmp), study, n) + (study,) for n, study in enumerate(DEMO_STUDIES, 1)]
            total = sum(len(files) for _, files, _ in studies)
            sending, sent = Progress(self.stdout, "sending", total), 0
            sending.show(0)
            for _, files, study in studies:
                target = Target(ae_title=ae_title, host=host, port=port, calling_ae_title=study.calling_ae_title)
                results = send(target, files)
                failed = [r for r in results if r.kind != DELIVERED]
                if failed:
                    sending.end()
                    why = failed[0].error or f"status 0x{failed[0].status:04X}"
                    raise CommandError(f"the SCP at {host}:{port} refused {study.description}: {why} (is it running?)")
                sent += len(files)
                sending.show(sent, study.description)
            sending.end()

        uids = [uid for uid, _, _ in studies]
        statuses: dict[str, dict | None] = {}
        if wait > 0:
            following = Progress(self.stdout, "routing", len(uids))
            deadline = time.monotonic() + wait
            while True:
                statuses = {uid: study_status(study_instance_uid=uid) for uid in uids}
                done = sum(settled(s) for s in statuses.values())
                following.show(done, "studies routed, delivered and assigned")
                if done == len(uids) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            following.end()

        self.stdout.write("")
        for uid, _, study in studies:
            self.stdout.write(self.describe(study, statuses.get(uid)))
        self.stdout.write("")
        self.stdout.write(f"  Worklist   {web}/worklist/   (log in as achen, bbaker, cdiaz or devans; password demo)")
        self.stdout.write(f"  Dashboard  {web}/dashboard/")
        self.stdout.write(f"  Admin      {web}/admin/   (admin / demo)")
        first = statuses.get(uids[0]) or {}
        if first.get("study_id"):
            self.stdout.write(f"  Timeline   {web}/admin/studies/{first['study_id']}/timeline/")
        self.stdout.write(f"  API        {web}/api/v1/docs/")
        self.stdout.write(f"  Delivered  {settings.VAR_DIR / 'demo-pacs'}   (the demo PACS's folder)")
        unsettled = [s.description for uid, _, s in studies if wait > 0 and not settled(statuses.get(uid))]
        if unsettled:
            raise CommandError(
                f"not settled within {wait:.0f} s: {', '.join(unsettled)} (are the workers running? see above)"
            )

    @staticmethod
    def describe(study: DemoStudy, status: dict | None) -> str:
        if not status:
            return f"  {study.description:<24} {'':<8} not registered yet"
        # The priority the router gave it (HIGH, as requested, is classified URGENT).
        head = f"  {study.description:<24} {status.get('priority') or '-':<8}"
        deliveries = ", ".join(f"{d['destination']} {d['state']}" for d in status.get("deliveries", [])) or "no route"
        reader = (status.get("assignment") or {}).get("radiologist") or "nobody yet"
        return f"{head} {status['stage']:<11} {deliveries:<28} -> {reader}"
