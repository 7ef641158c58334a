"""The docker sandbox: the same verdicts as the process sandbox, from a container per evaluation.

Skipped when no docker daemon answers (scripts/start_docker.sh starts one; CI runs it). The
image is built once per session, or reused when this Python environment has not changed.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from evaluator.cascade import EvalConfig, Evaluator
from evaluator.rules import Policy
from sandbox.docker import _exit_to_wait_status
from sandbox.image import Plan
from tests.conftest import FAST_TIMING
from tests.data.candidates import FAST, FORGED_CLAIMS, FORGED_EXIT, orphans, slow
from tests.sandbox.test_faults import _alive_with, assert_no_network

# --- no docker needed --------------------------------------------------------------------

def test_exit_codes_become_wait_statuses():
    segv = _exit_to_wait_status(128 + signal.SIGSEGV)
    assert os.WIFSIGNALED(segv) and os.WTERMSIG(segv) == signal.SIGSEGV
    code = _exit_to_wait_status(3)
    assert os.WIFEXITED(code) and os.WEXITSTATUS(code) == 3
    assert os.WIFEXITED(_exit_to_wait_status(0)) and os.WEXITSTATUS(_exit_to_wait_status(0)) == 0


def test_image_plan_keeps_links_and_reaches_their_targets(tmp_path):
    (tmp_path / "real" / "lib").mkdir(parents=True)
    (tmp_path / "real" / "lib" / "libx.so.1.2").write_bytes(b"\x7fELF")
    (tmp_path / "real" / "lib" / "libx.so.1").symlink_to("libx.so.1.2")
    (tmp_path / "alias").symlink_to("real")
    p = Plan()
    p.add(tmp_path / "alias" / "lib" / "libx.so.1")
    assert p.links == {str(tmp_path / "alias"): "real", str(tmp_path / "real" / "lib" / "libx.so.1"): "libx.so.1.2"}
    assert list(p.files) == [str(tmp_path / "real" / "lib" / "libx.so.1.2")]


def test_cli_rejects_a_bad_sandbox_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from agent.cli import app

    data = Path(__file__).resolve().parent.parent / "data"
    (tmp_path / "fast.py").write_text(FAST)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(data / "softmax_small.py"), str(tmp_path / "fast.py"), "--sandbox", "vm",
                            "--db", str(tmp_path / "kw.db")], env={"KERNELWRIGHT_DEBUG": ""})
    assert r.exit_code == 2 and "unknown sandbox 'vm'" in r.output
    r = runner.invoke(app, ["eval", str(data / "softmax_small.py"), str(tmp_path / "fast.py"), "--image", "x:y",
                            "--db", str(tmp_path / "kw.db")], env={"KERNELWRIGHT_DEBUG": ""})
    assert r.exit_code == 2 and "--image needs --sandbox docker" in r.output
    assert not (tmp_path / "kw.db").exists()


# --- real containers ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker_evaluator(docker_sandbox):
    ev = Evaluator(docker_sandbox, EvalConfig(timeout_s=60, timing=FAST_TIMING))
    yield ev
    ev.close()


@pytest.fixture(scope="session")
def docker_loose(docker_sandbox):
    ev = Evaluator(docker_sandbox, EvalConfig(timeout_s=8, timing=FAST_TIMING, policy=Policy(static_screen=False)))
    yield ev
    ev.close()


OOB = r'''
extern "C" void softmax_oob(float* out, float* x, int64_t rows, int64_t cols) {
    softmax_slow(out, x, rows, cols);
    x[rows * cols] = 0.0f;
}
'''
# (name, static screen on, source, statuses allowed, words the reason must hold)
CASES = [
    ("honest_slow", True, slow(), ("ok",), ""),
    ("fast", True, FAST, ("ok",), ""),
    ("segfault", False, slow(prelude="import ctypes\n", forward="\n        ctypes.string_at(0)\n        return x"),
     ("runtime_error",), "SIGSEGV"),
    ("cpp_abort", False, slow(extra_cpp='#include <stdexcept>\nextern "C" void boom() { throw std::runtime_error("x"); }\n',
                              forward="\n        _lib.boom()\n        return x"), ("runtime_error",), "SIGABRT"),
    ("os_exit_forged_result", False, slow(prelude="import os\n", forward=FORGED_EXIT), ("runtime_error", "incorrect"), ""),
    ("pytorch_compute", True, slow(forward="\n        return torch.softmax(x, dim=1)"), ("rejected",), "pytorch_compute"),
    ("aliased_output", True, slow(forward="\n        _lib.softmax_slow(x, x, x.shape[0], x.shape[1])\n        return x"),
     ("rejected",), "aliased_output"),
    ("out_of_bounds_write", True, slow(extra_cpp=OOB, forward="\n        out = torch.empty_like(x)\n"
                                       "        _lib.softmax_oob(out, x, x.shape[0], x.shape[1])\n        return out"),
     ("rejected",), "out_of_bounds_write"),
    ("lazy_output", True, slow(prelude="\nclass Lazy(torch.Tensor):\n    pass\n", forward="\n        out = torch.empty_like(x)\n"
                               "        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])\n        return out.as_subclass(Lazy)"),
     ("rejected",), "lazy_output"),
    ("forged_timings", False, slow(prelude=FORGED_CLAIMS), ("rejected",), "timing_mismatch"),
]


@pytest.mark.parametrize("name,strict,source,statuses,words", CASES, ids=[c[0] for c in CASES])
def test_same_verdict_as_the_process_sandbox(name, strict, source, statuses, words, request, small_task,
                                             docker_evaluator, docker_loose):
    process_ev = request.getfixturevalue("evaluator" if strict else "loose_evaluator")
    docker_ev = docker_evaluator if strict else docker_loose
    for v in (process_ev.evaluate(small_task, source), docker_ev.evaluate(small_task, source)):
        assert v.status.value in statuses, (name, v.status, v.reason, v.log[-1500:])
        assert words in v.reason, (name, v.reason)
        if v.status.value == "ok":
            assert v.speedup > 0 and v.candidate.median_ms > 0
            if name == "honest_slow":
                assert v.speedup < 1.0
        else:
            assert v.speedup is None


def test_infinite_loop_times_out(docker_loose, small_task):
    v = docker_loose.evaluate(small_task, slow(forward="\n        while True:\n            pass"))
    assert v.status.value == "timeout", v.reason


def test_memory_bomb_is_contained(docker_loose, small_task):
    v = docker_loose.evaluate(small_task, slow(forward="\n        hog = []\n        while True:\n"
                                                       "            hog.append(bytearray(1 << 28))"))
    assert v.status.value == "runtime_error"
    assert "MemoryError" in v.reason or "memory" in v.reason


def test_fork_bomb_and_orphans_die_with_the_container(docker_loose, small_task):
    marker = "876543.219"
    prelude = "import os, time\n" + orphans(marker) + f"""time.sleep(0.3)
_SLEEPERS = sum(1 for p in os.listdir("/proc") if p.isdigit() and "{marker}" in open(f"/proc/{{p}}/cmdline").read())
"""
    check = """
        assert _SLEEPERS == 2, _SLEEPERS
        out = torch.empty_like(x)
        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])
        return out"""
    v = docker_loose.evaluate(small_task, slow(prelude=prelude, forward=check))
    assert v.status.value == "ok", v.reason  # the sleepers ran, and the verdict stands
    deadline = time.monotonic() + 10
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive_with(marker) == []
    bomb = "\n        while True:\n            try:\n                os.fork()\n            except OSError:\n                pass"
    v = docker_loose.evaluate(small_task, slow(prelude="import os\n", forward=bomb))
    assert v.status.value in ("timeout", "runtime_error")
    time.sleep(0.5)
    assert len(os.listdir("/proc")) < 2000  # nothing left forking


def test_container_sees_no_secret_no_network_and_its_own_pids(docker_loose, small_task, docker_sandbox):
    probe = '''
        leaked = [k for k, v in os.environ.items() if "kwtest" in v]
        assert not leaked, f"leaked: {leaked}"
        assert b"kwtest" not in open("/proc/1/environ", "rb").read(), "pid 1 holds a secret"
        assert sorted(os.listdir("/sys/class/net")) == ["lo"], os.listdir("/sys/class/net")
        assert os.getpid() < 10 and open("/proc/1/cmdline").read() != ""
        assert open("scratch.txt").read() == "ok"
        out = torch.empty_like(x)
        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])
        return out'''
    # the tmpfs work directory is writable at import (after it, the seccomp filter refuses
    # files opened for writing)
    prelude = 'import os\nwith open("scratch.txt", "w") as f:\n    f.write("ok")\n'
    v = docker_loose.evaluate(small_task, slow(prelude=prelude, forward=probe))
    assert v.status.value == "ok", (v.reason, v.log[-1500:])
    assert not any(str(p).endswith("scratch.txt") for p in docker_sandbox.run_dir.rglob("*"))


def test_no_network(docker_loose, small_task):
    assert_no_network(docker_loose, small_task)


def test_root_and_mounts_are_read_only(docker_loose, small_task, docker_sandbox):
    """At import the read-only root and mounts hold; after it, the seccomp filter denies it first."""
    cache = docker_sandbox.cfg.compiler.cache_dir
    for target in ("/usr/kw_escaped.txt", str(cache / "kw_escaped.txt")):
        v = docker_loose.evaluate(small_task, slow(prelude=f'open({target!r}, "w").write("out")\n'))
        assert v.status.value == "runtime_error"
        assert "read-only" in v.reason.lower(), v.reason
        probe = f'''
        open({target!r}, "w").write("out")
        return x'''
        v = docker_loose.evaluate(small_task, slow(forward=probe))
        assert v.status.value == "runtime_error"
        assert "read-only" in v.reason.lower() or "Operation not permitted" in v.reason, v.reason
    assert not (cache / "kw_escaped.txt").exists()


def test_coverage_is_sampled_in_a_container_too(docker_evaluator, small_task):
    v = docker_evaluator.evaluate(small_task, FAST)
    assert v.status.value == "ok", v.reason
    assert v.coverage is not None and v.coverage.samples > 50 and v.coverage.share > 0.5, (v.coverage, v.flags)


def test_container_limits_as_configured(docker_sandbox):
    worker = docker_sandbox.spawn(30)
    try:
        container = worker.proc.container
        container.reload()
        host = container.attrs["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["PidsLimit"] == docker_sandbox.cfg.max_pids
        assert host["Memory"] >= docker_sandbox.cfg.memory_limit and host["NanoCpus"] > 0
        assert all(not m["RW"] for m in container.attrs["Mounts"])
        # /tmp gets a tmpfs unless this interpreter lives there (a venv in /tmp, as in a clone there)
        python_in_tmp = any(Path(p).resolve().is_relative_to("/tmp") for p in (sys.prefix, sys.base_prefix))
        assert set(host["Tmpfs"]) == ({"/kw/work"} if python_in_tmp else {"/kw/work", "/tmp"})
    finally:
        worker.close()
