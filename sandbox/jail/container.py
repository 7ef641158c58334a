"""Inside a docker sandbox container: pid 1 (the keeper) and the worker it forks.

    python -m sandbox.jail.container SOCKET [warm module ...]

The keeper imports torch and the worker's handler (as the fork server does), connects to the
supervisor's socket (the only way out of a container with no network), waits for its request,
writes the request's files into the tmpfs work directory and forks the worker. It then reaps
every process of the container until the worker ends, and exits with the worker's status:
its code, or 128 + the signal that killed it; the supervisor reads that from `docker wait`.
It kills the worker when the supervisor goes away or the hard deadline passes. When it exits
the kernel ends every process left in the container.
"""
from __future__ import annotations

import os
import socket
import sys

from sandbox import protocol
from sandbox.jail import startup


def main() -> None:
    path = sys.argv[1]
    startup.warm(sys.argv[2:])  # as the fork server: the worker pays no import
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    try:
        kind, req, _ = protocol.recv(sock)  # blocks while the container waits in the pool
    except (protocol.ProtocolError, OSError):
        os._exit(0)  # the supervisor is gone
    if kind != "start":
        os._exit(70)
    for name, text in req.pop("files", {}).items():
        with open(os.path.join(req["workdir"], os.path.basename(name)), "w") as f:
            f.write(text)
    sys.stdout.flush()
    startup.settle(req, sock.fileno())
    startup.serve(sock, req, [])

if __name__ == "__main__":
    main()
