"""An attacker's flood of short associations (associate, release, again) from one address, as its own
process: `python -m tests.hostile.flood PORT SOURCE COUNT STOPFILE` makes at least COUNT attempts and goes
on until STOPFILE exists, then prints "done refused". Run under `nice` by the tests: an attacker's CPU is
another machine's, not the router's."""

import socket
import sys
from pathlib import Path

from . import ASSOCIATE_AC, associate_rq, pdu_header, read_pdu


def main(port: int, source: str, count: int, stop: Path) -> None:
    request, release = associate_rq(), pdu_header(0x05, 4) + b"\0\0\0\0"
    done = refused = 0
    while done + refused < count or not stop.exists():
        try:
            with socket.socket() as sock:
                sock.settimeout(5)
                sock.bind((source, 0))
                sock.connect(("127.0.0.1", port))
                sock.sendall(request)
                if read_pdu(sock)[0] != ASSOCIATE_AC:
                    refused += 1
                    continue
                sock.sendall(release)
                read_pdu(sock)
                done += 1
        except (OSError, EOFError, AssertionError):
            refused += 1
    print(done, refused)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
