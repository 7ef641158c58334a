"""Candidates that crash, hang, hog or try to escape: each becomes a status, nothing leaks.

The static screen is off here (loose_evaluator), so the sandbox itself is what holds.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from evaluator.cascade import EvalConfig, Evaluator
from evaluator.rules import Policy
from sandbox.process import ProcessSandbox, SandboxConfig
from tests.conftest import FAST_TIMING
from tests.data.candidates import FORGED_EXIT, orphans, slow


def _alive_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_segfault_is_a_runtime_error(loose_evaluator, small_task):
    src = slow(prelude="import ctypes\n", forward="\n        ctypes.string_at(0)\n        return x")
    v = loose_evaluator.evaluate(small_task, src)
    assert v.status.value == "runtime_error"
    assert "SIGSEGV" in v.reason


def test_cpp_exception_and_abort_are_runtime_errors(loose_evaluator, small_task):
    extra = r'''
#include <stdexcept>
extern "C" void boom(int how) { if (how) throw std::runtime_error("kernel threw"); }
'''
    v = loose_evaluator.evaluate(small_task, slow(extra_cpp=extra, forward="\n        _lib.boom(1)\n        return x"))
    assert v.status.value == "runtime_error"
    assert "SIGABRT" in v.reason


def test_infinite_loop_times_out_and_is_killed(loose_evaluator, small_task):
    t0 = time.monotonic()
    v = loose_evaluator.evaluate(small_task, slow(forward="\n        while True:\n            pass"))
    assert v.status.value == "timeout"
    assert time.monotonic() - t0 < 30


def test_memory_bomb_is_contained(cache_dir, tmp_path, small_task):
    src = slow(forward="\n        hog = []\n        while True:\n            hog.append(bytearray(1 << 28))")
    with ProcessSandbox(SandboxConfig(cache_dir=cache_dir, root=tmp_path, memory_bytes=2 << 30)) as sb:
        ev = Evaluator(sb, EvalConfig(timeout_s=60, timing=FAST_TIMING, policy=Policy(static_screen=False)))
        try:
            v = ev.evaluate(small_task, src)
        finally:
            ev.close()
    assert v.status.value == "runtime_error"
    assert "MemoryError" in v.reason or "memory" in v.reason


def test_sys_exit_and_os_exit_with_forged_result(loose_evaluator, small_task):
    v = loose_evaluator.evaluate(small_task, slow(prelude="import sys\n", forward="\n        sys.exit(0)"))
    assert v.status.value == "runtime_error"
    v = loose_evaluator.evaluate(small_task, slow(prelude="import os\n", forward=FORGED_EXIT))
    assert v.status.value in ("runtime_error", "incorrect")
    assert v.speedup is None


def test_orphaned_children_are_killed(loose_evaluator, small_task):
    marker = "987654.321"
    spawn = "\n" + orphans(marker, " " * 8) + '''        out = torch.empty_like(x)
        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])
        return out'''
    loose_evaluator.evaluate(small_task, slow(prelude="import os\n", forward=spawn))
    deadline = time.monotonic() + 5
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive_with(marker) == []


def test_fork_bomb_is_contained(loose_evaluator, small_task):
    bomb = '''
        while True:
            try:
                os.fork()
            except OSError:
                pass'''
    t0 = time.monotonic()
    v = loose_evaluator.evaluate(small_task, slow(prelude="import os\n", forward=bomb))
    assert v.status.value in ("timeout", "runtime_error")
    assert time.monotonic() - t0 < 60
    time.sleep(0.5)
    assert len(os.listdir("/proc")) < 2000  # nothing left forking


def test_secrets_do_not_reach_the_candidate(cache_dir, tmp_path, small_task):
    parent = dict(os.environ, OPENAI_API_KEY="sk-kwtest-secret", MY_SERVICE_TOKEN="tok-kwtest-secret",
                  DB_PASSWORD="pw-kwtest-secret")
    probe = '''
        leaked = [k for k, v in os.environ.items() if "kwtest" in v]
        assert not leaked, f"leaked: {leaked}"
        out = torch.empty_like(x)
        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])
        return out'''
    with ProcessSandbox(SandboxConfig(cache_dir=cache_dir, root=tmp_path), parent_env=parent) as sb:
        ev = Evaluator(sb, EvalConfig(timing=FAST_TIMING, policy=Policy(static_screen=False)))
        try:
            v = ev.evaluate(small_task, slow(prelude="import os\n", forward=probe))
        finally:
            ev.close()
    assert v.status.value == "ok", v.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_no_network(loose_evaluator, small_task):
    assert_no_network(loose_evaluator, small_task)


def assert_no_network(evaluator, task) -> None:
    """A candidate that connects to a server listening on this machine's loopback fails, and
    the server never sees a connection (shared with the docker sandbox's tests)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue
            except OSError:  # closed by the test
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    probe = f'''
        s = socket.socket()
        s.settimeout(2)
        s.connect(("127.0.0.1", {port}))
        return x'''
    v = evaluator.evaluate(task, slow(prelude="import socket\n", forward=probe))
    server.close()
    t.join()
    assert v.status.value == "runtime_error"
    assert accepted == []


@pytest.mark.skipif(os.geteuid() != 0, reason="read-only mounts need root")
def test_writes_outside_the_work_directory_fail(loose_evaluator, small_task, tmp_path):
    """At import the read-only mounts hold; after it, the seccomp filter denies it first."""
    target = tmp_path / "escaped.txt"
    v = loose_evaluator.evaluate(small_task, slow(prelude=f'open({str(target)!r}, "w").write("out")\n'))
    assert v.status.value == "runtime_error"
    assert "Read-only" in v.reason or "read-only" in v.reason.lower(), v.reason
    probe = f'''
        open({str(target)!r}, "w").write("out")
        return x'''
    v = loose_evaluator.evaluate(small_task, slow(forward=probe))
    assert v.status.value == "runtime_error"
    assert "read-only" in v.reason.lower() or "Operation not permitted" in v.reason, v.reason
    assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="pid namespaces need root")
def test_worker_sees_its_own_pid_namespace(loose_evaluator, small_task):
    probe = '''
        me = int(open("/proc/self/stat").read().split()[0])
        assert me == os.getpid() and os.getpid() < 10, (me, os.getpid())
        assert open("/proc/1/cmdline").read() != "", "pid 1 must be our init"
        out = torch.empty_like(x)
        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])
        return out'''
    v = loose_evaluator.evaluate(small_task, slow(prelude="import os\n", forward=probe))
    assert v.status.value == "ok", v.reason
