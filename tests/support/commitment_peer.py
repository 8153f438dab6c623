"""A pynetdicom destination that stores and is a storage commitment SCP (Push Model), for the tests.

It commits to what it stored, except the SOP Instance UIDs in `fail_once` (reported failed the first time a
request lists them: committed when they come again), and sends its N-EVENT-REPORT on a new association to
the router's SCP (`report_to`), or on the requesting association (`same_association`), or never (`silent`).
"""

import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance, Verification

from apps.ingest.scp import TRANSFER_SYNTAXES

from .processes import free_port


class CommitmentSCP:
    def __init__(
        self,
        *,
        ae_title: str = "COMMIT_PEER",
        report_to: tuple[str, int, str] | None = None,  # (host, port, AE title) of the router's SCP
        fail_once: set[str] | None = None,
        same_association: bool = False,
        silent: bool = False,
        folder: Path | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.report_to = report_to
        self.fail_once = set(fail_once or ())
        self.same_association = same_association
        self.silent = silent
        self.folder = folder
        self.stored: list[str] = []  # SOP Instance UIDs, one per C-STORE (a re-sent instance twice)
        self.requests: list[tuple[str, list[str]]] = []  # (Transaction UID, SOP Instance UIDs) per N-ACTION
        self.reports: list[tuple[str, int, int]] = []  # (Transaction UID, event type, report status)
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(StorageCommitmentPushModel)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)

    def _store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.stored.append(uid)
        if self.folder is not None:
            (self.folder / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    def _action(self, event):
        info = event.action_information
        transaction_uid = str(info.TransactionUID)
        references = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in info.ReferencedSOPSequence
        ]
        with self._lock:
            self.requests.append((transaction_uid, [uid for _, uid in references]))
            failed = [r for r in references if r[1] in self.fail_once or r[1] not in self.stored]
            self.fail_once -= {uid for _, uid in failed}
        if not self.silent:
            report = _report(transaction_uid, [r for r in references if r not in failed], failed)
            assoc = event.assoc if self.same_association else None
            threading.Thread(target=self._send_report, args=(report, assoc), daemon=True).start()
        return 0x0000, None

    def _send_report(self, report: tuple[Dataset, int], assoc) -> None:
        info, event_type = report
        if assoc is not None:
            time.sleep(0.05)  # after our N-ACTION response has gone
            status, _ = assoc.send_n_event_report(
                info, event_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
            self._reported(info, event_type, status)
            return
        host, port, ae_title = self.report_to
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        # The SCP of storage commitment opens this association: it proposes the SCP role for itself (J.3.3).
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate(host, port, ae_title=ae_title, ext_neg=[role])
        if not assoc.is_established:
            self._reported(info, event_type, Dataset())
            return
        try:
            status, _ = assoc.send_n_event_report(
                info, event_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
        finally:
            assoc.release()
        self._reported(info, event_type, status)

    def _reported(self, info: Dataset, event_type: int, status: Dataset) -> None:
        with self._lock:
            self.reports.append((str(info.TransactionUID), event_type, int(status.get("Status", -1))))

    def __enter__(self) -> "CommitmentSCP":
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)]
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


def _report(transaction_uid: str, committed: list, failed: list) -> tuple[Dataset, int]:
    info = Dataset()
    info.TransactionUID = transaction_uid
    info.ReferencedSOPSequence = [_reference(c, i) for c, i in committed]
    if failed:
        info.FailedSOPSequence = [_reference(c, i, reason=0x0110) for c, i in failed]
    return info, 2 if failed else 1


def _reference(sop_class: str, sop_instance: str, *, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item
