"""The fast path: real g++ builds, the content-hash cache, checked calls."""
from __future__ import annotations

import pytest
import torch

from sandbox import fastpath
from sandbox.compiler import CompilerConfig, CompileSpec, build

SRC = r'''
#include <cstdint>
extern "C" void axpy(float* __restrict__ y, const float* x, int64_t n, float a) {
    #pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
extern "C" {
    double dot(const double* a, const double* b, long n) { double s = 0; for (long i = 0; i < n; ++i) { s += a[i] * b[i]; } return s; }
}
'''


@pytest.fixture
def cfg(tmp_path):
    return CompilerConfig(cache_dir=tmp_path)


def test_build_is_cached_by_content(cfg):
    first = build(CompileSpec(SRC), cfg)
    assert first.ok and not first.cached
    again = build(CompileSpec(SRC), cfg)
    assert again.ok and again.cached and again.path == first.path
    other = build(CompileSpec(SRC, defines=(("BLOCK", "4"),)), cfg)
    assert other.ok and other.path != first.path


def test_compile_error_carries_the_log(cfg):
    r = build(CompileSpec('extern "C" void f() { undefined_thing(); }'), cfg)
    assert not r.ok and "undefined_thing" in r.log and r.path == ""


def test_compile_timeout(tmp_path):
    # a constexpr loop of 2^31 steps keeps g++ busy far longer than the limit (a template bomb
    # can crash g++ on its stack first, on a fast machine)
    bomb = "constexpr long spin(long n) { long s = 0; for (long i = 0; i < n; ++i) s += i % 7; return s; }\n" \
           'extern "C" long f() { constexpr long v = spin(1L << 31); return v; }\n'
    flags = ("-fconstexpr-loop-limit=2147483647", "-fconstexpr-ops-limit=1099511627776")
    r = build(CompileSpec(bomb, flags=flags), CompilerConfig(cache_dir=tmp_path, timeout_s=1.0))
    assert not r.ok and "timed out" in r.log and r.seconds < 10


def test_calls_are_checked_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELWRIGHT_CACHE", str(tmp_path))
    lib = fastpath.compile(SRC)
    x, y = torch.ones(1000), torch.zeros(1000)
    before = fastpath.launches().get("axpy", 0)
    lib.axpy(y, x, x.numel(), 2.0)
    assert torch.all(y == 2.0)
    assert fastpath.launches()["axpy"] == before + 1
    assert lib.dot(torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), 4) == 4.0
    with pytest.raises(TypeError, match="float\\*, got a float64"):
        lib.axpy(y, x.double(), 10, 1.0)
    with pytest.raises(TypeError, match="takes 4 arguments"):
        lib.axpy(y, x, 10)
    with pytest.raises(TypeError, match="not contiguous"):
        lib.axpy(torch.zeros(10, 10).t(), torch.zeros(10, 10), 100, 1.0)
    with pytest.raises(TypeError, match="wants an int"):
        lib.axpy(y, x, 10.5, 1.0)


def test_compile_error_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELWRIGHT_CACHE", str(tmp_path))
    with pytest.raises(fastpath.CompileError, match="nope"):
        fastpath.compile('extern "C" void f() { nope(); }')


def test_prototypes_ignore_comments_and_read_blocks():
    protos = fastpath.prototypes(SRC + '\n// extern "C" void ghost(int x);\n')
    assert set(protos) == {"axpy", "dot"}
    assert [p.name for p in protos["axpy"].params] == ["y", "x", "n", "a"]
    assert protos["axpy"].params[0].pointer and not protos["axpy"].params[2].pointer


def test_the_steps_of_a_build_share_one_deadline(tmp_path):
    """Compile then link (a CUDA library's two steps): the link gets what the compile left, not a
    whole timeout of its own."""
    from sandbox.compiler import Recipe, cached_build, run_until

    ran: list[tuple[int | None, str]] = []

    def steps(where, deadline):
        for _ in range(2):  # each step alone fits in the limit, both together do not
            ran.append(run_until(["sleep", "0.7"], where, deadline, 1000))
            if ran[-1][0] != 0:
                return None, ""
        return 0, ""

    r = cached_build(Recipe("ab" * 32, "lib.so", {}, steps, 1.0), tmp_path)
    assert [code for code, _ in ran] == [0, None]
    assert not r.ok and "build timed out after 1 s" in r.log and r.seconds < 1.5
