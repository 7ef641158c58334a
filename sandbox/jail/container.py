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

import importlib
import os
import select
import signal
import socket
import sys
import time
import traceback

from sandbox import limits, protocol


def main() -> None:
    path, warm = sys.argv[1], sys.argv[2:]
    for name in warm:  # as the fork server: the worker pays no import
        try:
            module = importlib.import_module(name.lstrip("?"))
        except ImportError:
            if name.startswith("?"):
                continue
            raise
        if hasattr(module, "warm_up"):
            module.warm_up()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    try:
        kind, req, _ = protocol.recv(sock)  # blocks while the container waits in the pool
    except (protocol.ProtocolError, OSError):
        os._exit(0)  # the supervisor is gone
    if kind != "start":
        os._exit(70)
    os.makedirs(req["env"]["TMPDIR"], exist_ok=True)
    for name, text in req.pop("files", {}).items():
        with open(os.path.join(req["workdir"], os.path.basename(name)), "w") as f:
            f.write(text)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            _worker(req, sock)
            code = 0
        finally:
            os._exit(code)
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
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(req["workdir"])
    os.environ.clear()
    os.environ.update(req["env"])
    limits.set_rlimits(req.get("memory_bytes"), req["max_file_bytes"])
    from sandbox.jail import loop

    try:
        loop.serve(sock, req, [])
    except BaseException:  # the handler itself failed: say why in the log the supervisor reads
        traceback.print_exc()
        sys.stderr.flush()
        raise


if __name__ == "__main__":
    main()
