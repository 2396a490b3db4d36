"""Stand in for systemd's notification socket (Type=notify) on hosts where systemd is not PID 1.

Usage: ``notify_listener.py SOCKET_PATH TIMEOUT_SECONDS``. Binds a datagram socket at
SOCKET_PATH (mode 0666, so the service user can send), prints every message with the sender's
PID (SO_PASSCRED, which is how systemd checks ``NotifyAccess=main``) and exits 0 at the first
``READY=1``, 1 when none arrives before the deadline.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time


def main(argv: list[str]) -> int:
    """Wait for READY=1 on the socket; return the exit status."""
    path, timeout = argv[0], float(argv[1])
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(path)
    os.chmod(path, 0o666)
    deadline = time.monotonic() + timeout
    creds_size = struct.calcsize("3i")
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                print("notify: no READY=1 before the deadline", flush=True)
                return 1
            sock.settimeout(remaining)
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _uid, _gid = struct.unpack("3i", payload[:creds_size])
            message = data.decode("utf-8", "replace").replace("\n", " ")
            print(f"notify: pid={pid} {message}", flush=True)
            if "READY=1" in data.decode("utf-8", "replace").split("\n"):
                return 0
    finally:
        sock.close()
        os.unlink(path)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
