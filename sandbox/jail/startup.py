"""What the fork server's workers and a container's worker do alike on their way in: warm
imports before any request, then one process that keeps only its socket, runs in its work
directory with the environment the supervisor chose, under its limits, and serves."""
from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import traceback
from typing import Any, Callable

from sandbox import limits


def warm(names: list[str]) -> None:
    """Import these now (torch, the worker's handler; "?name": if installed) and pay their lazy
    set-up, so that no worker pays it."""
    for name in names:
        try:
            module = importlib.import_module(name.lstrip("?"))
        except ImportError:
            if name.startswith("?"):
                continue
            raise
        if hasattr(module, "warm_up"):  # lazy imports a first call would otherwise pay
            module.warm_up()


def forked(child: Callable[..., object], *args: Any) -> int:
    """Fork; the child runs `child(*args)` and exits (0 if it returned, 70 if it raised), never
    coming back; the parent gets its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            child(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def settle(req: dict[str, Any], keep_fd: int) -> None:
    """Standard input from /dev/null, every descriptor but the socket closed, default signal
    handling, the work directory and the worker's environment (nothing of the process that
    forked it)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 65536)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(req["workdir"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.makedirs(req["env"]["TMPDIR"], exist_ok=True)


def serve(sock: socket.socket, req: dict[str, Any], notes: list[str]) -> None:
    """Under the worker's limits, the request loop (sandbox/jail/loop.py) until the supervisor
    says bye; a handler that fails says why in the log the supervisor reads."""
    limits.set_rlimits(req.get("memory_bytes"), req["max_file_bytes"])
    # Imported here, not at the top: the fork server imports this module before torch, and
    # hashlib (OpenSSL's libcrypto, which sandbox.compiler imports) loaded before torch made the
    # worker of an OpenMP candidate (tests/data/candidates.py FAST) die with SIGSEGV in its
    # timing rounds. torch is loaded first by warm(); this module is in sys.modules by then.
    from sandbox.jail import loop

    try:
        loop.serve(sock, req, notes)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        raise
