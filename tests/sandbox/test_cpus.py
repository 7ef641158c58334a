"""Timing cores apart from compile cores: the partition, its lock, and the check that a timed
candidate stays on the timing cores (real workers, real cgroup accounting)."""
from __future__ import annotations

import os
import platform
import sys
import threading
import time

import pytest

from evaluator.cascade import EvalConfig, Evaluator, TimingConfig
from evaluator.devicelock import DeviceLock
from evaluator.rules import Policy
from sandbox import cpus
from sandbox.compiler import run_compiler
from sandbox.process import ProcessSandbox, SandboxConfig
from tests.data.candidates import HEADER


def test_partition_specs(monkeypatch):
    monkeypatch.setattr(cpus, "usable", lambda: (0, 1, 2, 3))
    assert cpus.partition("auto", "cpu") == (2, 3)
    assert cpus.partition("auto", "cuda") == ()  # GPU timing needs no cores of its own
    assert cpus.partition("all", "cpu") == ()
    assert cpus.partition("1,3", "cpu") == (1, 3) and cpus.partition("1-2", "cpu") == (1, 2)
    for bad, words in (("7", "may use cores 0,1,2,3"), ("0-3", "leave at least one core"), ("x", "use auto")):
        with pytest.raises(ValueError, match=words):
            cpus.partition(bad, "cpu")
    monkeypatch.setattr(cpus, "usable", lambda: (0,))
    assert cpus.partition("auto", "cpu") == ()  # one core: nothing to split


def test_with_timing_apart_checks_do_not_wait_for_a_timing_phase():
    for apart, expect_blocked in ((True, False), (False, True)):
        lock, entered = DeviceLock(timing_apart=apart), threading.Event()

        def check(lock: DeviceLock = lock, entered: threading.Event = entered) -> None:
            with lock.shared():
                entered.set()

        with lock.exclusive():
            t = threading.Thread(target=check)
            t.start()
            assert entered.wait(0.3) is not expect_blocked
        t.join(5)
        assert entered.is_set()


def test_compilers_leave_the_timing_cores_for_a_timing_phase(tmp_path):
    if len(cpus.usable()) < 2:
        pytest.skip("needs 2 cores")
    lender = cpus.Lender(cpus.partition("auto", "cpu"))
    show = [sys.executable, "-c", "import os, time; time.sleep(float(os.environ.get('W', 0))); "
            "print(sorted(os.sched_getaffinity(0)))"]
    assert run_compiler(show, tmp_path, 30, 1000) == (0, f"{sorted(lender.all)}\n")  # no phase: every core
    lender.confine(True)
    try:
        assert run_compiler(show, tmp_path, 30, 1000) == (0, f"{sorted(lender.rest)}\n")  # started during a phase
    finally:
        lender.confine(False)
    # one already running when a phase begins is moved too
    got: list = []
    os.environ["W"] = "1.0"
    try:
        t = threading.Thread(target=lambda: got.append(run_compiler(show, tmp_path, 30, 1000)))
        t.start()
        time.sleep(0.4)
        lender.confine(True)
        t.join(10)
    finally:
        lender.confine(False)
        del os.environ["W"]
    assert got == [(0, f"{sorted(lender.rest)}\n")]


SPREAD = HEADER + r'''
SRC = r"""
#include <cstdint>
#include <sched.h>
#include <omp.h>
// a raw system call (the binary screen refuses a library importing sched_setaffinity)
static long raw_setaffinity(long pid, long len, void* mask) {
    long ret;
    asm volatile("syscall" : "=a"(ret) : "a"(203L), "D"(pid), "S"(len), "d"(mask) : "rcx", "r11", "memory");
    return ret;
}
extern "C" void relu2(float* y, const float* x, int64_t n, int reps, int widen) {
    // two threads split the work; with `widen` the second moves itself to core 0 (off the
    // timing cores, which are the upper half)
    #pragma omp parallel num_threads(2)
    {
        if (widen && omp_get_thread_num() == 1) {
            cpu_set_t zero; CPU_ZERO(&zero); CPU_SET(0, &zero);
            raw_setaffinity(0, sizeof(zero), &zero);
        }
        const int t = omp_get_thread_num();
        const int64_t lo = t * n / 2, hi = (t + 1) * n / 2;
        for (int r = 0; r < reps; ++r)
            for (int64_t i = lo; i < hi; ++i) y[i] = x[i] > 0.f ? 2.f * x[i] : 0.f;
    }
}
"""
_lib = fastpath.compile(SRC)


class ModelNew(nn.Module):
    def forward(self, x):
        y = torch.empty_like(x)
        _lib.relu2(y, x, x.numel(), 60, WIDEN)
        return y
'''


@pytest.fixture(scope="module")
def apart_evaluator(cache_dir, tmp_path_factory):
    if len(cpus.usable()) < 2 or os.geteuid() != 0 or platform.machine() != "x86_64":
        pytest.skip("needs 2 cores, a cgroup per worker (root) and x86-64 (a raw system call)")
    timing = cpus.partition("auto", "cpu")
    sb = ProcessSandbox(SandboxConfig(cache_dir=cache_dir, root=tmp_path_factory.mktemp("apart"),
                                      memory_bytes=4 << 30, threads=len(timing), timing_cpus=timing))
    ev = Evaluator(sb, EvalConfig(timeout_s=60, policy=Policy(static_screen=False),
                                  timing=TimingConfig(warmup=2, min_iters=5, target_s=0.4)))
    yield ev
    ev.close()
    sb.close()


def test_a_kernel_that_moves_its_threads_off_the_timing_cores_is_rejected(apart_evaluator):
    from tasks.spec import load_task
    from tests.conftest import ROOT

    task = load_task(ROOT / "tests" / "data" / "scale_small.py")
    t0 = time.monotonic()
    stays = apart_evaluator.evaluate(task, SPREAD.replace("WIDEN", "0"))
    assert stays.status.value == "ok", stays.reason  # two threads, both kept on the timing core
    escapes = apart_evaluator.evaluate(task, SPREAD.replace("WIDEN", "1"))
    # the thread's affinity, read from /proc after each timed round, gives it away
    assert escapes.status.value == "rejected" and "cores_escaped" in escapes.reason, escapes.reason
    assert time.monotonic() - t0 < 120
