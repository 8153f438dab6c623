"""Orthanc (the Debian package) as a real destination PACS: its own process, configuration and storage."""

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from .processes import Process, free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian's orthanc-dicomweb


class Orthanc:
    def __init__(
        self,
        folder: Path,
        *,
        log_dir: Path,
        ae_title: str = "ORTHANC",
        name: str = "orthanc",
        extra: dict | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.folder, self.log_dir, self.name = folder, log_dir, name
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "orthanc.json"
        # A free port can be taken by another test's process before Orthanc binds it (pytest-xdist workers
        # share the machine): then it is started again on others.
        for attempt in range(3):
            self.dicom_port, self.http_port = free_port(), free_port()
            self._write_config(extra)
            try:
                self.start()
                return
            except AssertionError as exc:
                if "already in use" not in str(exc) or attempt == 2:
                    raise

    def _write_config(self, extra: dict | None) -> None:
        config = {
            "Name": self.name,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # The router is no registered modality: accept its C-STOREs whatever its AE title.
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            # Debian's default configuration loads plugins from /usr/share/orthanc/plugins: none here.
            "Plugins": [],
            **(extra or {}),
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        """Start (again, after stop(): same configuration, same storage)."""
        # Debian's dcmtk-based Orthanc leaves Nagle on and stalls ~40 ms per C-STORE without this.
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.process = Process(self.name, [ORTHANC, str(self.config_path)], env=env, log_dir=self.log_dir)
        self.process.wait_for_port(self.dicom_port)
        self.process.wait_for_port(self.http_port)

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: Any) -> Any:
        """POST `body` (JSON, or bytes as they are: a DICOM file to /instances)."""
        raw = isinstance(body, bytes)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=body if raw else json.dumps(body).encode(),
            headers={"Content-Type": "application/dicom" if raw else "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def instances(self) -> list[str]:
        """Orthanc's own ids of the instances it stores (not SOP Instance UIDs)."""
        return self._get("/instances")

    def statistics(self) -> dict:
        return self._get("/statistics")

    def instance_count(self) -> int:
        return len(self.instances())

    def stop(self) -> int:
        # After SIGTERM Orthanc takes ~3.5 s to stop (its HTTP and DICOM servers poll for the stop flag).
        return self.process.stop(timeout=30)
