"""Debian's HAProxy in TCP mode in front of SCP nodes, as a real process on a free port (127.0.0.1), with
its admin socket to read what its health checks decided and how many connections each node took."""

import csv
import io
import shutil
import socket
from pathlib import Path

from .processes import Process, free_port, wait_until

# HAProxy connects to the nodes from this loopback address, not the modalities' 127.0.0.1: an SCP that
# admitted a caller bound to 127.0.0.1 can only have learnt its address from the PROXY header.
BALANCER_SOURCE = "127.0.0.2"


def config(*, port: int, nodes: dict[str, int], admin: Path, send_proxy: str = "send-proxy-v2") -> str:
    servers = "\n".join(f"    server {name} 127.0.0.1:{node_port}" for name, node_port in nodes.items())
    return f"""global
    stats socket {admin} mode 600 level admin
    maxconn 256

defaults
    mode tcp
    log stdout format raw local0
    option tcplog
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    retries 3
    option redispatch 1

frontend dicom
    bind 127.0.0.1:{port}
    default_backend scp

backend scp
    balance roundrobin
    default-server check inter 200ms fall 1 rise 1 source {BALANCER_SOURCE} {send_proxy}
{servers}
"""


class HAProxy:
    def __init__(self, *, nodes: dict[str, int], folder: Path, log_dir: Path, send_proxy: str = "send-proxy-v2"):
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise FileNotFoundError("Debian's haproxy is not installed (apt-get install haproxy)")
        self.port = free_port()
        self.admin = folder / "haproxy.sock"
        self.config = folder / "haproxy.cfg"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config(port=self.port, nodes=nodes, admin=self.admin, send_proxy=send_proxy))
        self.process = Process("haproxy", [binary, "-db", "-f", str(self.config)], env={}, log_dir=log_dir)
        self.process.wait_for_port(self.port)
        wait_until(lambda: self.admin.exists(), timeout=10, what="HAProxy's admin socket")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(5)
            admin.connect(str(self.admin))
            admin.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := admin.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """Each node's row of `show stat`: status (UP, DOWN), stot (connections it took), scur (open now)."""
        text = self.command("show stat").lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == "scp"}

    def status(self, name: str) -> str:
        return self.servers()[name]["status"]

    def taken(self, name: str) -> int:
        return int(self.servers()[name]["stot"])

    def wait_for_status(self, name: str, status: str, timeout: float = 15) -> None:
        wait_until(lambda: self.status(name).startswith(status), timeout=timeout, what=f"HAProxy: {name} {status}")

    def stop(self) -> None:
        self.process.stop()
