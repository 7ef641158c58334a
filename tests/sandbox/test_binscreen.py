"""The binary screen: undefined symbols read from real g++/nvcc builds, judged by the allowlist."""
from __future__ import annotations

import importlib.util
import shutil
import struct
import time
from pathlib import Path

import pytest

from sandbox import binscreen, fastpath
from sandbox.compiler import HOST_OBJECT, CompilerConfig, CompileSpec, build
from tests.data import candidates, gpu_candidates

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted((ROOT / "tasks" / "suites").glob("*/seeds/*.py"))
HAS_NVCC = shutil.which("nvcc") is not None


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> CompilerConfig:
    return CompilerConfig(cache_dir=tmp_path_factory.mktemp("binscreen-cache"))


def _built(cfg: CompilerConfig, source: str, lang: str = "cpp", **kw) -> tuple[CompileSpec, object]:
    spec = CompileSpec(source=source, lang=lang, **kw)
    result = build(spec, cfg)
    assert result.ok, result.log[-2000:]
    return spec, result


def test_the_reader_lists_what_a_real_library_imports(cfg):
    src = r'''
#include <cmath>
#include <cstdlib>
#include <cstring>
extern "C" float helper_defined_here(float x) { return x * 2.f; }
extern "C" float k(float* y, const float* x, long n) {
    float* t = (float*)std::malloc(n * sizeof(float));
    std::memcpy(t, x, n * sizeof(float));
    for (long i = 0; i < n; ++i) y[i] = std::exp(t[i]) + helper_defined_here(t[i]);
    std::free(t);
    return y[0];
}
'''
    _, r = _built(cfg, src)
    symbols, needed = binscreen.read_elf(Path(r.path).read_bytes())
    names = {s.name for s in symbols}
    assert {"malloc", "free", "memcpy", "expf"} <= names, names
    assert "helper_defined_here" not in names and "k" not in names  # defined, not imported
    assert any(s.name == "__gmon_start__" and s.weak for s in symbols)
    assert "libc.so.6" in needed
    assert binscreen.screen_file(r.path) == []


def test_what_is_not_a_64bit_little_endian_elf_is_refused(tmp_path):
    with pytest.raises(binscreen.NotElf):
        binscreen.read_elf(b"#!/bin/sh\n")
    with pytest.raises(binscreen.NotElf, match="64-bit little-endian"):
        binscreen.read_elf(b"\x7fELF\x01\x01" + bytes(58))
    with pytest.raises(binscreen.NotElf, match="malformed|truncated"):
        binscreen.read_elf(b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<H", 3) + bytes(10))
    bad = tmp_path / "lib.so"
    bad.write_bytes(b"not a library")
    assert "cannot be screened" in str(binscreen.screen_file(bad)[0])


# --- every seed and every honest test candidate passes --------------------------------------

def _specs_of(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[CompileSpec]:
    """The fast-path builds a seed asks for at its default knobs (lazy builders included)."""
    specs: list[CompileSpec] = []

    class Recorded(Exception):
        pass

    def record(spec: CompileSpec):
        specs.append(spec)
        raise Recorded

    monkeypatch.setattr(fastpath, "_builder", record)
    spec = importlib.util.spec_from_file_location(f"binscreen_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if hasattr(module, "_library"):
            module._library()
    except Recorded:
        pass
    return specs


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: f"{p.parent.parent.name}:{p.stem}")
def test_every_seed_passes(path: Path, cfg, monkeypatch):
    specs = _specs_of(path, monkeypatch)
    if not specs:
        assert "import triton" in path.read_text(), "a seed without a fast-path build should be a Triton one"
        pytest.skip("a Triton seed: no fast-path library")
    for spec in specs:
        if spec.lang == "cuda" and not HAS_NVCC:
            pytest.skip("nvcc is not installed")
        spec = CompileSpec(**{**spec.__dict__, "arch": spec.arch or "sm_90"})
        r = build(spec, cfg)
        assert r.ok, r.log[-2000:]
        assert binscreen.screen_file(r.path, spec.lang) == []
        if spec.lang == "cuda":  # judged by its own host object, kept next to it
            assert (Path(r.path).parent / HOST_OBJECT).is_file()


@pytest.mark.parametrize("name, source, lang", [
    ("slow", candidates.SLOW_CPP, "cpp"), ("fast", candidates.FAST.split('r"""')[1].split('"""')[0], "cpp"),
    ("scale", candidates.scale(1).split('r"""')[1].split('"""')[0], "cpp"),
    ("gpu_kernels", gpu_candidates.KERNELS, "cuda"),
])
def test_the_honest_test_candidates_pass(name, source, lang, cfg):
    if lang == "cuda" and not HAS_NVCC:
        pytest.skip("nvcc is not installed")
    _, r = _built(cfg, source, lang, arch="sm_90" if lang == "cuda" else None)
    assert binscreen.screen_file(r.path, lang) == []


# --- attacks: the symbol is seen whatever the spelling ---------------------------------------

ATTACKS = [
    ("asm_label_python", r'''
int run(const char*) __asm__("PyRun_SimpleString");
extern "C" void k(float* y) { run("pass"); y[0] = 1; }
''', "PyRun_SimpleString", "the Python interpreter: kernels must not reach the harness"),
    ("weak_python", r'''
extern "C" __attribute__((weak)) int PyGILState_Ensure();
extern "C" void k(float* y) { if (PyGILState_Ensure) y[0] = PyGILState_Ensure(); }
''', "PyGILState_Ensure", "the Python interpreter"),
    ("asm_label_libtorch", r'''
void* empty_like(void*) __asm__("_ZN2at10empty_likeERKNS_6TensorEN3c1013TensorOptionsESt8optionalINS3_12MemoryFormatEE");
extern "C" void k(float* y) { y[0] = empty_like(y) != nullptr; }
''', "_ZN2at10empty_like", "libtorch"),
    ("macro_dlsym", r'''
#include <dlfcn.h>
#define CAT(a, b) a##b
extern "C" void k(float* y) { y[0] = CAT(dl, sym)(RTLD_DEFAULT, "PyRun_SimpleString") != nullptr; }
''', "dlsym", "loads or looks up code at run time"),
    ("syscall", r'''
#include <unistd.h>
#include <sys/syscall.h>
extern "C" void k(float* y) { y[0] = syscall(SYS_getpid); }
''', "syscall", "raw system calls"),
    ("clock_gettime", r'''
#include <time.h>
extern "C" void k(float* y) { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); y[0] = t.tv_nsec; }
''', "clock_gettime", "reads the clock"),
    ("pthread_create", r'''
#include <pthread.h>
static void* work(void* p) { ((float*)p)[0] = 1; return nullptr; }
extern "C" void k(float* y) { pthread_t t; pthread_create(&t, nullptr, work, y); pthread_detach(t); }
''', "pthread_create", "starts a thread"),
    ("mprotect", r'''
#include <sys/mman.h>
extern "C" void k(float* y) { y[0] = mprotect((void*)((long)y & ~4095L), 4096, PROT_READ | PROT_WRITE | PROT_EXEC); }
''', "mprotect", "changes memory mappings"),
    ("getenv", r'''
#include <cstdlib>
extern "C" void k(float* y) { y[0] = std::getenv("OPENAI_API_KEY") != nullptr; }
''', "getenv", "the environment"),
    ("unlisted", r'''
#include <cstdlib>
extern "C" void k(float* y) { y[0] = std::rand(); }
''', "rand", "not on the allowlist"),
]


@pytest.mark.parametrize("name, source, symbol, reason", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attacks_are_refused_with_their_reason(name, source, symbol, reason, cfg):
    spec, r = _built(cfg, source)
    found = binscreen.screen_file(r.path)
    assert found and any(f.symbol.startswith(symbol) and reason in f.reason for f in found), found
    first = str(found[0])
    assert first.startswith("binary_screen: the library imports ")
    screened = binscreen.screen_build(spec, r)
    assert not screened.ok and screened.path == "" and screened.screen == first and first in screened.log
    assert not Path(r.path).exists()  # gone from the cache: no path to it is ever handed out
    again = binscreen.screen_build(spec, build(spec, cfg))  # rebuilt, and refused again
    assert not again.ok and again.screen == first


def test_the_first_finding_reads_as_the_rejection_reason(cfg):
    _, r = _built(cfg, ATTACKS[0][1])
    assert str(binscreen.screen_file(r.path)[0]) == ("binary_screen: the library imports PyRun_SimpleString "
                                                     "(the Python interpreter: kernels must not reach the harness)")


def test_a_linked_library_outside_the_runtimes_is_refused(cfg):
    src = 'extern "C" void k(float* y) { y[0] = 1; }\n'
    spec = CompileSpec(source=src, flags=("-Wl,--no-as-needed", "-lresolv"))
    r = build(spec, cfg)
    if not r.ok:
        pytest.skip("no libresolv to link here")
    found = binscreen.screen_file(r.path)
    assert any(f.what == "links" and f.symbol.startswith("libresolv") for f in found), found


@pytest.mark.skipif(not HAS_NVCC, reason="nvcc is not installed")
def test_a_cuda_launcher_is_judged_by_its_host_code(cfg):
    src = r'''
#include <cuda_runtime.h>
#include <unistd.h>
__global__ void fill(float* y) { y[threadIdx.x] = 1.f; }
extern "C" void k(float* y, cudaStream_t s) { fill<<<1, 32, 0, s>>>(y); (void)getpid(); }
'''
    _, r = _built(cfg, src, "cuda", arch="sm_90")
    found = binscreen.screen_file(r.path, "cuda")
    assert [f.symbol for f in found] == ["getpid"], found  # what the static runtime imports does not count


def test_an_honest_library_passes_through_and_the_screen_is_cheap(cfg):
    spec, r = _built(cfg, candidates.SLOW_CPP)
    assert binscreen.screen_build(spec, r) is r
    t0 = time.perf_counter()
    for _ in range(20):
        binscreen.screen_file(r.path)
    assert (time.perf_counter() - t0) / 20 < 0.05  # about 0.1 ms here
