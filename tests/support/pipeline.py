"""The pipeline without Celery: what the SCP registers, and the chain's steps called in order."""

import shutil
from pathlib import Path

from pydicom import dcmread

from apps.pipeline.services import study_notify
from apps.reading.services import study_assign
from apps.routing.services import study_route
from apps.studies.services import (
    received_instance_register,
    study_check,
    study_classify,
    study_persist,
    study_register,
)


def receive(storage: Path, path: Path) -> str:
    """Put the file in storage and register it, as the SCP does; returns the Study Instance UID."""
    ds = dcmread(path, stop_before_pixels=True)
    relative = f"instances/{ds.SOPInstanceUID}.dcm"
    (storage / "instances").mkdir(exist_ok=True)
    shutil.copy(path, storage / relative)
    received_instance_register(
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        study_instance_uid=ds.StudyInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        path=relative,
        size=path.stat().st_size,
        calling_ae_title="MODALITY",
        called_ae_title="ROUTER",
        peer_address="127.0.0.1",
    )
    return ds.StudyInstanceUID


def run_steps(study_id: int, *, until: str = "notify") -> list[int]:
    """Run persist..`until` in order; returns the delivery ids route asked to send."""
    due: list[int] = []
    steps = {
        "persist": lambda: study_persist(study_id=study_id),
        "classify": lambda: study_classify(study_id=study_id),
        "check": lambda: study_check(study_id=study_id),
        "route": lambda: due.extend(study_route(study_id=study_id)),
        "assign": lambda: study_assign(study_id=study_id),
        "notify": lambda: study_notify(study_id=study_id),
    }
    for name, step in steps.items():
        step()
        if name == until:
            break
    return due


def receive_study(storage: Path, paths: list[Path]) -> int:
    uid = ""
    for path in paths:
        uid = receive(storage, path)
    return study_register(study_instance_uid=uid).pk
