"""DICOM data for the tests: the files pydicom ships, synthetic studies, and dataset bytes."""

import os
import subprocess
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid

from .processes import dcmtk

# The files pydicom ships that cover the encodings the SCP must store byte for byte.
SHIPPED = {
    "ct": "CT_small.dcm",  # Explicit VR Little Endian
    "mr": "MR_small.dcm",
    "jpeg": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "jpeg_lossless": "JPGExtended.dcm",
    "jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg2000": "JPEG2000.dcm",
    "rle": "MR_small_RLE.dcm",
}


def shipped(name: str) -> Path:
    return Path(get_testdata_file(SHIPPED.get(name, name)))


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the preamble and file meta: what travels over the network."""
    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        return fh.read()


def received_into(spool, raw: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str):
    """A spool temp file holding `raw` as the SCP receives a dataset: written the way pynetdicom writes it
    (preamble, its file meta, then the dataset's bytes)."""
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import create_file_meta

    temp = spool.open_temp()
    temp.write(b"\0" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid, transfer_syntax=transfer_syntax
    )
    write_file_meta_info(temp, meta)
    temp.write(raw)
    return temp


def synthetic_study(
    folder: Path,
    *,
    count: int = 3,
    body_part: str = "HEAD",
    modality: str = "CT",
    priority: str = "",
    patient_name: str = "Doe^Jane",
    study_uid: str | None = None,
    patient_id: str | None = None,
    sop_class_uid: str | None = None,
) -> tuple[str, list[Path]]:
    """`count` instances of one new study (a new series of it, given `study_uid`), made from CT_small with
    fresh UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = dcmread(shipped("ct"))
        # storescu drops trailing padding on the way; without it, what it sends is the file's dataset.
        del ds[0xFFFCFFFC]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.BodyPartExamined = body_part
        ds.Modality = modality
        ds.PatientName = patient_name
        if patient_id is not None:
            ds.PatientID = patient_id
        if sop_class_uid is not None:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
        ds.AccessionNumber = f"ACC{study_uid[-6:]}"
        if priority:
            ds.RequestedProcedurePriority = priority
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


# storescu proposes a compressed syntax only when told to, one kind per run.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def storescu(port: int, files: list[Path], *, called: str = "ROUTER", calling: str = "MODALITY", timeout: float = 60):
    """dcmtk's storescu as a real process, with TCP_NODELAY (Debian's dcmtk leaves Nagle on).

    Files go in their own transfer syntax, as a modality sends them: one storescu run per syntax, with
    -R so only what the files need is proposed. Returns the last failing run, or the last run.
    """
    groups: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(STORESCU_PROPOSE.get(syntax, ""), []).append(path)
    result = None
    for option, paths in groups.items():
        args = [dcmtk("storescu"), "-R", *([option] if option else []), "-aet", calling, "-aec", called]
        args += ["127.0.0.1", str(port), *map(str, paths)]
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env={**os.environ, "TCP_NODELAY": "1"}
        )
        if result.returncode != 0:
            return result
    return result
