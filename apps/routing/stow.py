"""The DICOMweb sender: STOW-RS of stored files to a destination, byte for byte, and a QIDO probe for health.

Files go in bounded batches (count and bytes), one `multipart/related; type="application/dicom"` request each,
streamed from disk with a Content-Length (no chunked encoding: some servers refuse it). What each instance
became is read from the response body, never from the HTTP status alone (PS3.18 10.5.3): an instance in
ReferencedSOPSequence was stored; in FailedSOPSequence it failed with its FailureReason, classified like a
C-STORE status; in neither, it was not stored and goes again. 200, 202 and 409 are read that way (Orthanc's
DICOMweb plugin up to 1.9 answers 200 although instances failed; a 409's body says which). Network errors,
408, 429 (with its Retry-After) and 5xx are transient for the whole batch; 400, 401, 403, 404, 413 and 415
permanent, with the reason. Requests go through `requests` directly: dicomweb-client raises on a 409 before
its body can be read, and buffers the request.

Results use dicom_send's kinds, so a delivery records a STOW-RS answer as it records a C-STORE one.
"""

import json
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from pydicom import dcmread

from apps.core import clock, secret_refs

from .dicom_send import DELIVERED, PERMANENT, TRANSIENT, WARNING, File, Result, classify_status

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
REFERENCED, FAILED = "00081199", "00081198"
SOP_INSTANCE, FAILURE_REASON, WARNING_REASON = "00081155", "00081197", "00081196"
PERMANENT_HTTP = {400, 401, 403, 404, 413, 415}
MAX_RETRY_AFTER = 3600.0  # seconds: a longer Retry-After is taken as this


@dataclass(frozen=True)
class WebTarget:
    url: str  # the DICOMweb base URL (…/dicom-web); STOW-RS goes to url + /studies
    auth: str = "none"  # none | basic | bearer | token
    credentials: str = ""  # env:VARIABLE or file:/path
    timeout: float = 60
    verify: bool = True
    ca_file: str = ""
    batch_count: int = 10
    batch_bytes: int = 10 * 2**20
    verify_stored: bool = False  # look each "stored" instance up by QIDO-RS (servers that answer stored wrongly)


class CredentialsUnavailable(Exception):
    pass


def _credentials(target: WebTarget) -> dict:
    """Authentication for `requests`: read now from where the destination says (never stored in the database)."""
    if target.auth == "none":
        return {}
    try:
        value = secret_refs.read(target.credentials).decode()
    except (secret_refs.SecretUnavailable, UnicodeDecodeError) as exc:
        raise CredentialsUnavailable(f"DICOMweb credentials ({target.credentials}) cannot be read") from exc
    if target.auth == "basic":
        user, _, password = value.partition(":")
        return {"auth": (user, password)}
    scheme = "Token" if target.auth == "token" else "Bearer"
    return {"headers": {"Authorization": f"{scheme} {value}"}}


def _tls_refusal(exc: Exception) -> bool:
    """A certificate that does not verify, or a TLS alert: configuration. A handshake cut short (EOF, reset:
    a load balancer restarting) is not."""
    text = str(exc).lower()
    return "certificate" in text or "alert" in text or "wrong version number" in text


def _verify(target: WebTarget):
    return (target.ca_file or True) if target.verify else False


class _Body:
    """A multipart/related body read from the files on demand: `requests` sends it with its length."""

    def __init__(self, paths: list[Path], boundary: str) -> None:
        self.boundary = boundary
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._pieces: list[bytes | Path] = []
        for path in paths:
            self._pieces += [head, path, b"\r\n"]
        self._pieces.append(f"--{boundary}--\r\n".encode())
        self.len = sum(len(p) if isinstance(p, bytes) else p.stat().st_size for p in self._pieces)
        self._chunks = self._iterate()
        self._pending = b""
        self.given = 0  # bytes handed to the connection so far

    def _iterate(self) -> Iterator[bytes]:
        for piece in self._pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            with open(piece, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._pending) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._pending += chunk
        if size < 0:
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        self.given += len(out)
        return out


def batches(files: list[File], *, count: int, size: int) -> list[list[int]]:
    """Indexes of `files` in batches of at most `count` files and `size` bytes (a bigger file goes alone)."""
    out: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for index, file in enumerate(files):
        length = file.path.stat().st_size
        if current and (len(current) >= count or current_bytes + length > size):
            out.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += length
    if current:
        out.append(current)
    return out


def send(target: WebTarget, files: list[File], on_sent: Callable[[int, Result], None] | None = None) -> list[Result]:
    """STOW-RS `files`; one Result per file, in order. Never raises for network or server trouble."""
    results: list[Result | None] = [None] * len(files)
    try:
        auth = _credentials(target)
    except CredentialsUnavailable as exc:
        failure = Result(TRANSIENT, error=str(exc), unreachable=True, config_error=True)
        return _all(range(len(files)), failure, results, on_sent)
    readable = []
    for index, file in enumerate(files):
        try:
            uid = _sop_instance_uid(file.path)
        except Exception as exc:  # noqa: BLE001 - a file we cannot read is that file's failure, never the batch's
            _all([index], Result(TRANSIENT, error=f"file not readable ({type(exc).__name__})"), results, on_sent)
            continue
        readable.append((index, uid))
    uids = dict(readable)
    sendable = [files[i] for i, _ in readable]
    for batch in batches(sendable, count=target.batch_count, size=target.batch_bytes):
        indexes = [readable[i][0] for i in batch]
        outcome = _send_batch(target, [files[i] for i in indexes], [uids[i] for i in indexes], auth)
        for i, result in zip(indexes, outcome, strict=True):
            results[i] = result
            if on_sent is not None:
                on_sent(i, result)
        if all(r.unreachable for r in outcome):
            # Not reached at all: the rest would fail the same way (the caller pauses or retries it).
            rest = [i for i, r in enumerate(results) if r is None]
            return _all(rest, outcome[0], results, on_sent)
    return [r or Result(TRANSIENT, error="not attempted") for r in results]


def _all(indexes, failure: Result, results: list, on_sent) -> list[Result]:
    for i in indexes:
        results[i] = failure
        if on_sent is not None:
            on_sent(i, failure)
    return [r or failure for r in results]


def _send_batch(target: WebTarget, files: list[File], uids: list[str], auth: dict) -> list[Result]:
    boundary = secrets.token_hex(16)
    body = _Body([f.path for f in files], boundary)
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        **auth.get("headers", {}),
    }
    try:
        response = requests.post(
            target.url.rstrip("/") + "/studies",
            data=body,
            headers=headers,
            auth=auth.get("auth"),
            timeout=target.timeout,
            verify=_verify(target),
        )
    except requests.exceptions.SSLError as exc:
        return [Result(TRANSIENT, error=f"TLS: {exc}", unreachable=True, config_error=_tls_refusal(exc))] * len(files)
    except requests.exceptions.ConnectionError as exc:
        # Refused or never connected: unreachable (the destination may be down). Dropped while the body went:
        # reached, and nothing of this batch is known stored.
        error = f"connection failed: {type(exc).__name__}"
        return [Result(TRANSIENT, error=error, unreachable=body.given == 0)] * len(files)
    except requests.exceptions.RequestException as exc:
        return [Result(TRANSIENT, error=f"request failed: {type(exc).__name__}")] * len(files)
    results = outcomes(response.status_code, response.headers, response.content, uids)
    if target.verify_stored:
        results = _verified(target, auth, uids, results)
    return results


def _verified(target: WebTarget, auth: dict, uids: list[str], results: list[Result]) -> list[Result]:
    """Instances the answer called stored that a QIDO-RS search does not find were not stored: they go again
    (and fail for good after the retry budget, as any instance the destination keeps refusing)."""
    claimed = [uid for uid, r in zip(uids, results, strict=True) if r.kind in (DELIVERED, WARNING)]
    if not claimed:
        return results
    try:
        response = requests.get(
            target.url.rstrip("/") + "/instances",
            params={"SOPInstanceUID": ",".join(claimed), "includefield": "00080018", "limit": str(len(claimed))},
            headers={"Accept": "application/dicom+json", **auth.get("headers", {})},
            auth=auth.get("auth"),
            timeout=target.timeout,
            verify=_verify(target),
        )
        found = {_value(item, "00080018") for item in response.json()} if response.status_code == 200 else set()
    except (requests.exceptions.RequestException, ValueError, TypeError, AttributeError):
        found = set()
    unverified = Result(TRANSIENT, error="answered as stored, but a QIDO-RS search does not find it")
    return [unverified if uid in claimed and uid not in found else r for uid, r in zip(uids, results, strict=True)]


def _value(item: dict, tag: str) -> str:
    value = (item.get(tag) or {}).get("Value") or [""]
    return str(value[0])


def outcomes(status: int, headers, content: bytes, uids: list[str]) -> list[Result]:
    """What each instance of a batch became, from the response (a pure function: tests give it answers)."""
    http = f"HTTP {status}"
    if status in (200, 202, 409):
        return _from_body(status, content, uids)
    if status in (408, 429) or status >= 500:
        retry_after = _retry_after(headers.get("Retry-After")) if status == 429 else None
        return [Result(TRANSIENT, error=f"{http}: try again later", retry_after=retry_after)] * len(uids)
    reason = _short(content)
    if status in PERMANENT_HTTP:
        error = f"{http} ({_HTTP_MEANING.get(status, '')}){': ' + reason if reason else ''}"
        if status in (401, 403, 404):
            # The destination's configuration, not the data: paused, the items kept pending for Resume.
            return [Result(TRANSIENT, error=error, config_error=True, unreachable=True)] * len(uids)
        return [Result(PERMANENT, error=error)] * len(uids)
    return [Result(TRANSIENT, error=f"{http}: unexpected answer")] * len(uids)


_HTTP_MEANING = {
    400: "bad request",
    401: "not authenticated: check the credentials",
    403: "not allowed: check the account's rights",
    404: "no STOW-RS service at this URL",
    413: "request too large: lower the batch size",
    415: "media type not supported",
}


def _from_body(status: int, content: bytes, uids: list[str]) -> list[Result]:
    try:
        answer = json.loads(content) if content else {}
    except ValueError:
        answer = {}
    if isinstance(answer, list):  # some servers wrap the dataset in a list
        answer = answer[0] if answer else {}
    stored = {_uid(item): _number(item, WARNING_REASON) for item in _items(answer, REFERENCED)}
    failed = {_uid(item): _number(item, FAILURE_REASON) for item in _items(answer, FAILED)}
    out = []
    for uid in uids:
        if uid in failed:
            code = failed[uid]
            kind = classify_status(code) if code is not None else TRANSIENT
            kind = TRANSIENT if kind in (DELIVERED, WARNING) else kind  # a failure is never a success
            out.append(Result(kind, status=code, error=f"failed on the destination (FailureReason {_hex(code)})"))
        elif uid in stored:
            warning = stored[uid]
            out.append(Result(WARNING if warning else DELIVERED, status=warning or 0, error=""))
        else:
            out.append(Result(TRANSIENT, error=f"HTTP {status}: not in the answer (not stored)"))
    return out


def _items(answer: dict, tag: str) -> list[dict]:
    element = answer.get(tag) if isinstance(answer, dict) else None
    value = element.get("Value") if isinstance(element, dict) else None
    return [item for item in value or [] if isinstance(item, dict)]


def _uid(item: dict) -> str:
    value = (item.get(SOP_INSTANCE) or {}).get("Value") or [""]
    return str(value[0])


def _number(item: dict, tag: str) -> int | None:
    value = (item.get(tag) or {}).get("Value") or [None]
    try:
        return int(value[0]) if value[0] is not None else None
    except (TypeError, ValueError):
        return None


def _hex(code: int | None) -> str:
    return "none given" if code is None else f"0x{code:04X}"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - clock.now()).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _short(content: bytes) -> str:
    return content[:200].decode("utf-8", "replace").strip().replace("\n", " ")


def _sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def probe(target: WebTarget) -> Result:
    """Health: a QIDO-RS search for one study. Reachable and answering is up; 401/403 is a configuration
    error; anything else (refused, timeout, 5xx, 404) down."""
    try:
        auth = _credentials(target)
    except CredentialsUnavailable as exc:
        return Result(TRANSIENT, error=str(exc), unreachable=True, config_error=True)
    try:
        response = requests.get(
            target.url.rstrip("/") + "/studies",
            params={"limit": "1"},
            headers={"Accept": "application/dicom+json", **auth.get("headers", {})},
            auth=auth.get("auth"),
            timeout=min(target.timeout, 30),
            verify=_verify(target),
        )
    except requests.exceptions.SSLError as exc:
        return Result(TRANSIENT, error=f"TLS: {exc}", unreachable=True, config_error=_tls_refusal(exc))
    except requests.exceptions.RequestException as exc:
        return Result(TRANSIENT, error=f"QIDO-RS failed: {type(exc).__name__}", unreachable=True)
    if response.status_code in (200, 204):
        return Result(DELIVERED, status=response.status_code)
    if response.status_code in (401, 403):
        error = f"HTTP {response.status_code} ({_HTTP_MEANING[response.status_code]})"
        return Result(TRANSIENT, error=error, config_error=True, unreachable=True)
    return Result(TRANSIENT, error=f"QIDO-RS answered HTTP {response.status_code}", unreachable=True)
