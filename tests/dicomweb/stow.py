"""Requests to the STOW-RS receiver: multipart/related bodies, curl, and what the storage holds."""

import json
import subprocess
from pathlib import Path

from pydicom import Dataset

from apps.studies.models import ReceivedInstance

from ..support.dicom import dataset_bytes

BOUNDARY = "stow-test-7d3f1e"
DICOM_BODY = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

SUCCESS, OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
SOP_CLASS_NOT_SUPPORTED, TRANSFER_SYNTAX_NOT_SUPPORTED = 0x0122, 0xC122


def multipart_body(*parts: bytes, boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    body = b"".join(
        b"--%s\r\nContent-Type: %s\r\n\r\n%s\r\n" % (boundary.encode(), part_type.encode(), part) for part in parts
    )
    return body + b"--%s--\r\n" % boundary.encode()


def curl(
    url: str, body: Path, *, token: str | None = None, content_type: str = DICOM_BODY, chunked: bool = False
) -> tuple[int, str, dict | None]:
    """POST `body` with curl; returns the status, the response's content type and its JSON (or None)."""
    args = ["curl", "-sS", "-X", "POST", "--data-binary", f"@{body}", "-H", f"Content-Type: {content_type}"]
    args += ["-H", "Accept: application/dicom+json", "-w", "\n%{http_code} %{content_type}", url]
    if token:
        args += ["-H", f"Authorization: Token {token}"]
    if chunked:
        args += ["-H", "Transfer-Encoding: chunked"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    text, _, last = result.stdout.rpartition("\n")
    status, _, response_type = last.partition(" ")
    return int(status), response_type, json.loads(text) if text.strip() else None


def referenced(response: Dataset | dict) -> list[tuple[str, str]]:
    ds = response if isinstance(response, Dataset) else Dataset.from_json(response)
    return [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedSOPSequence", [])]


def failed(response: Dataset | dict) -> list[tuple[str, str, int]]:
    ds = response if isinstance(response, Dataset) else Dataset.from_json(response)
    return [
        (i.get("ReferencedSOPClassUID", ""), i.get("ReferencedSOPInstanceUID", ""), i.FailureReason)
        for i in ds.get("FailedSOPSequence", [])
    ]


def stored_bytes(storage: Path, sop_instance_uid: str) -> bytes:
    """The dataset of the file kept for this instance, after its preamble and file meta."""
    row = ReceivedInstance.objects.get(sop_instance_uid=sop_instance_uid)
    return dataset_bytes(storage / row.path)


def nothing_kept(storage: Path) -> bool:
    """No received row, no instance file, no temp file left behind."""
    files = [p for p in storage.rglob("*") if p.is_file()]
    return not ReceivedInstance.objects.exists() and not files
