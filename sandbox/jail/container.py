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
import select
import signal
import socket
import sys
import time

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
    pid = startup.forked(_worker, req, sock)
    os._exit(_keep(pid, sock, time.monotonic() + float(req["hard_timeout_s"])))


def _keep(pid: int, sock: socket.socket, deadline: float) -> int:
    """Reap until the worker ends; kill it when the supervisor hangs up or time is up."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP)  # never read: that is the worker's
    status = None
    while status is None:
        while True:
            try:
                done, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 70
            if not done:
                break
            if done == pid:
                status = st
                break
        if status is None and (poller.poll(50) or time.monotonic() > deadline):
            os.kill(pid, signal.SIGKILL)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _worker(req: dict, sock: socket.socket) -> None:
    startup.settle(req, sock.fileno())
    startup.serve(sock, req, [])


if __name__ == "__main__":
    main()
