"""Speed of light: what this machine can do at best, measured, for the cores and threads that time.

On a CPU device the ceilings are sustained memory bandwidth, copy (bytes read + bytes written
per second) and read-only, in cache (a working set well inside each thread's L2) and out of
cache (4x the last-level cache, at most 256 MiB: see Sizes), and fp32 FMA throughput (independent vector FMA
chains). Small C++ kernels, built by the fast path's compiler (-O3 -march=native), run in a
fresh interpreter pinned to the given cores with the given OpenMP thread count, so nothing else
of kernelwright's runs in the measuring process. Each figure is the BEST of several
repetitions (and of several copy methods: a vector loop, memcpy, non-temporal stores): a
ceiling is the most the machine does, not what it usually does, so noise only ever lowers it.

Copy counts bytes read plus bytes written, as a kernel's minimum bytes do (tasks/work.py); the
extra read a regular store costs (write-allocate) is not counted, which is why the best copy
method wins and a kernel with regular stores tops out below 1.0 of copy out of cache.

CUDA ceilings are measured by the GPU device script; `from_device_json` reads what it wrote.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SOURCE = r"""
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <omp.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
typedef float vf __attribute__((vector_size(VBYTES)));
#define VL (VBYTES / 4)
#define BLOCK 128  /* floats per thread chunk granule */
#define ACC 8  /* independent read accumulators */
static volatile float kw_sink;
static double now_s() { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static inline void clobber() { asm volatile("" ::: "memory"); }
static float* alloc(int64_t n) { return (float*)aligned_alloc(4096, ((n * 4 + 4095) / 4096) * 4096); }
static void span(int64_t n, int64_t& lo, int64_t& hi) {
  int t = omp_get_thread_num(), T = omp_get_num_threads();
  int64_t per = (n / BLOCK + T - 1) / T * BLOCK;
  lo = per * t < n ? per * t : n; hi = lo + per < n ? lo + per : n;
}
static void touch(float* a, float* b, int64_t n, int threads) {
  #pragma omp parallel num_threads(threads)
  { int64_t lo, hi; span(n, lo, hi);
    for (int64_t i = lo; i < hi; ++i) { a[i] = 1.0f + (float)(i & 7); if (b) b[i] = 0.0f; } }
}
/* mode 0: vector loop, 1: memcpy, 2: non-temporal stores; returns GB/s (read + write), -1: no memory */
extern "C" double kw_copy(int64_t nbytes, int64_t passes, int64_t reps, int64_t threads, int64_t mode) {
  int64_t n = nbytes / 8 / BLOCK * BLOCK; if (n < BLOCK) n = BLOCK;
  float* a = alloc(n); float* b = alloc(n);
  if (!a || !b) { free(a); free(b); return -1; }
  touch(a, b, n, (int)threads);
  double best = 0;
  for (int64_t r = -1; r < reps; ++r) {
    double t0 = now_s();
    #pragma omp parallel num_threads((int)threads)
    { int64_t lo, hi; span(n, lo, hi);
      for (int64_t p = 0; p < passes; ++p) {
        if (mode == 1) { memcpy(b + lo, a + lo, (size_t)(hi - lo) * 4); }
#if defined(__SSE__)
        else if (mode == 2) {
          for (int64_t i = lo; i < hi; i += 16) {
  #if defined(__AVX512F__)
            _mm512_stream_ps(b + i, _mm512_load_ps(a + i));
  #else
            for (int k = 0; k < 16; k += 4) _mm_stream_ps(b + i + k, _mm_load_ps(a + i + k));
  #endif
          }
          _mm_sfence();
        }
#endif
        else { for (int64_t i = lo; i < hi; i += VL) *(vf*)(b + i) = *(const vf*)(a + i); }
        clobber();
      } }
    double s = now_s() - t0;
    if (r >= 0 && s > 0 && 8.0 * n * passes / s / 1e9 > best) best = 8.0 * n * passes / s / 1e9;
  }
  kw_sink = b[n / 2]; free(a); free(b); return best;
}
extern "C" double kw_read(int64_t nbytes, int64_t passes, int64_t reps, int64_t threads) {
  int64_t n = nbytes / 4 / BLOCK * BLOCK; if (n < BLOCK) n = BLOCK;
  float* a = alloc(n);
  if (!a) return -1;
  touch(a, nullptr, n, (int)threads);
  double best = 0;
  for (int64_t r = -1; r < reps; ++r) {
    double t0 = now_s();
    #pragma omp parallel num_threads((int)threads)
    { int64_t lo, hi; span(n, lo, hi);
      vf acc[ACC] = {};
      for (int64_t p = 0; p < passes; ++p) {
        for (int64_t i = lo; i < hi; i += ACC * VL) {
          #pragma GCC unroll 8
          for (int k = 0; k < ACC; ++k) acc[k] += *(const vf*)(a + i + k * VL);
        }
        clobber();
      }
      float s = 0; for (int k = 0; k < ACC; ++k) for (int j = 0; j < VL; ++j) s += acc[k][j];
      #pragma omp critical
      kw_sink = kw_sink + s; }
    double s = now_s() - t0;
    if (r >= 0 && s > 0 && 4.0 * n * passes / s / 1e9 > best) best = 4.0 * n * passes / s / 1e9;
  }
  free(a); return best;
}
#define CHAINS 12  /* independent FMA chains per thread: latency x ports, with room */
extern "C" double kw_fma(int64_t iters, int64_t reps, int64_t threads) {
  double best = 0;
  for (int64_t r = -1; r < reps; ++r) {
    double t0 = now_s();
    #pragma omp parallel num_threads((int)threads)
    { vf x[CHAINS]; vf m, c;
      for (int j = 0; j < VL; ++j) { m[j] = 0.9999999f; c[j] = 1e-7f; }
      for (int k = 0; k < CHAINS; ++k) for (int j = 0; j < VL; ++j) x[k][j] = 1.0f + 1e-3f * (k * VL + j + omp_get_thread_num());
      for (int64_t it = 0; it < iters; ++it) {
        #pragma GCC unroll 12
        for (int k = 0; k < CHAINS; ++k) x[k] = x[k] * m + c;
      }
      float s = 0; for (int k = 0; k < CHAINS; ++k) for (int j = 0; j < VL; ++j) s += x[k][j];
      #pragma omp critical
      kw_sink = kw_sink + s; }
    double s = now_s() - t0;
    double flops = 2.0 * CHAINS * VL * (double)iters * (double)threads;
    if (r >= 0 && s > 0 && flops / s / 1e9 > best) best = flops / s / 1e9;
  }
  return best;
}
"""

# Runs in a fresh interpreter (stdlib only): pin, then call the kernels, print the figures.
_CHILD = """
import ctypes, json, os, sys
cores, path, jobs = json.loads(sys.argv[1])
os.sched_setaffinity(0, cores)
lib = ctypes.CDLL(path)
out = {}
for name, fn, args in jobs:
    f = getattr(lib, fn)
    f.restype, f.argtypes = ctypes.c_double, [ctypes.c_int64] * len(args)
    out[name] = f(*args)
print(json.dumps(out))
"""


COPY_METHODS = ("loop", "memcpy", "stream")  # kw_copy's modes 0, 1, 2


class CeilingError(RuntimeError):
    """The ceilings could not be measured (one line)."""


@dataclasses.dataclass(frozen=True)
class Ceilings:
    device: str  # "cpu" or "cuda"
    fingerprint_id: str  # evaluator/fingerprint.py: the machine these figures belong to
    cores: tuple[int, ...]  # the cores measured (CPU); () on a GPU
    threads: int
    copy_gbs: float  # out of cache: (bytes read + bytes written) / s / 1e9
    read_gbs: float
    copy_gbs_cached: float  # a working set well inside L2 (a quarter of it per thread)
    read_gbs_cached: float  # (details["levels"]: the same per cache level, L1 and LLC too)
    fma_gflops: float  # fp32, all threads
    measured_at: str  # ISO 8601, UTC
    llc_bytes: int
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # sizes, reps; CUDA: per-dtype peaks

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cores"], out["details"] = list(self.cores), dict(self.details)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Ceilings:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["cores"] = tuple(int(c) for c in kw.get("cores", ()))
        kw["details"] = dict(kw.get("details") or {})
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to measure. The defaults are what the CLI stores; tests shrink them."""

    cached_bytes: int | None = None  # one in-cache working set; None: per level (half of L1, a quarter of L2, of LLC)
    uncached_bytes: int | None = None  # None: llc_factor x the last-level cache, at most max_uncached_bytes
    llc_factor: float = 4.0
    # Some machines report a huge last-level cache (480 MiB on a 2-core VM here, a host's whole L3
    # while a guest gets a slice of it): 4x of that is two 1.9 GiB buffers and many seconds. 256 MiB
    # is far beyond what stays cached on such a guest (its LLC level already measures as memory),
    # and keeps a measurement at a few seconds for the CLI.
    max_uncached_bytes: int = 256 << 20
    min_rep_bytes: int = 256 << 20  # one repetition moves at least this (passes over a small buffer)
    fma_iters: int = 4_000_000  # per thread per repetition (about 0.05 s on a 3 GHz AVX-512 core)
    reps: int = 5  # the best of these counts
    timeout_s: float = 300.0
    quick: bool = False  # recorded in the details: figures of tiny sizes are not ceilings

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(cached_bytes=64 << 10, uncached_bytes=8 << 20, min_rep_bytes=4 << 20, fma_iters=20_000, reps=2,
                   timeout_s=60.0, quick=True)


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG") or 0) * mult


def cache_sizes(cpu: int = 0) -> dict[int, int]:
    """Data or unified cache bytes by level, as sysfs tells them ({} where it does not)."""
    out: dict[int, int] = {}
    for d in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        try:
            if (d / "type").read_text().strip() in ("Data", "Unified"):
                level = int((d / "level").read_text())
                out[level] = max(out.get(level, 0), _size((d / "size").read_text()))
        except (OSError, ValueError):
            continue
    return out


def _build(cache_dir: Path | None) -> str:
    from sandbox.compiler import CompilerConfig, CompileSpec, build

    if cache_dir is None:
        cache_dir = Path(os.environ.get("KERNELWRIGHT_CACHE") or Path.home() / ".cache" / "kernelwright")
    result = build(CompileSpec(source=SOURCE, flags=("-ffp-contract=fast",)),
                   CompilerConfig(cache_dir=Path(cache_dir) / "fastpath"))
    if not result.ok:
        raise CeilingError("the ceiling kernels failed to compile: " + (result.log.strip().splitlines() or ["?"])[-1])
    return result.path


def _run(path: str, cores: Sequence[int], jobs: list[tuple[str, str, list[int]]], timeout_s: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    env["OMP_WAIT_POLICY"] = "active"  # threads spin between the short in-cache regions
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, json.dumps([list(cores), path, jobs])],
                              capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise CeilingError(f"measuring the ceilings took over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise CeilingError(f"the ceiling probe failed: {(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if any(v < 0 for v in out.values()):
        raise CeilingError("the ceiling probe could not allocate its buffers (less --uncached memory?)")
    return out


def measure(cores: Sequence[int], threads: int, *, fingerprint_id: str = "", device: str = "cpu",
            sizes: Sizes = Sizes(), cache_dir: Path | None = None) -> Ceilings:
    """Measure the CPU ceilings on `cores` with `threads` OpenMP threads (best of sizes.reps)."""
    cores = tuple(sorted(cores)) or tuple(sorted(os.sched_getaffinity(0)))
    if threads < 1:
        raise CeilingError(f"threads must be at least 1, not {threads}")
    caches = cache_sizes(cores[0])
    llc = caches[max(caches)] if caches else 32 << 20
    l1, l2 = caches.get(1, 32 << 10), caches.get(2, 1 << 20)
    # in cache, per level: (name, what fits there, the working set measured); private caches
    # count once per thread. A working set fits the smallest level it fits (evaluator/roofline.py).
    if sizes.cached_bytes:
        levels = [("L2", max(sizes.cached_bytes, threads * l2), sizes.cached_bytes)]
    else:
        levels = [("L1", threads * l1, threads * l1 // 2), ("L2", threads * l2, threads * l2 // 4)]
        if max(caches, default=0) >= 3 and llc // 4 > threads * l2:
            # a guest gets a slice of a shared last level, its size unknown (sysfs may tell the
            # host's): probe 8 and 32 MiB on the way, each measured at half of what it stands for
            for cap in (8 << 20, 32 << 20):
                if threads * l2 < cap // 2 and cap < llc:
                    levels.append((f"LLC{cap >> 20}M", cap, cap // 2))
            levels.append(("LLC", llc, llc // 4))
    uncached = sizes.uncached_bytes or min(int(sizes.llc_factor * llc), sizes.max_uncached_bytes)
    r, t = sizes.reps, threads
    jobs: list[tuple[str, str, list[int]]] = []
    for name, _, size in levels + [("DRAM", 0, uncached)]:
        passes = max(1, math.ceil(sizes.min_rep_bytes / size)) if name != "DRAM" else 1
        jobs += [(f"{name}/copy/{how}", "kw_copy", [size, passes, r, t, mode]) for mode, how in enumerate(COPY_METHODS)]
        jobs.append((f"{name}/read", "kw_read", [size, passes, r, t]))
    jobs.append(("fma", "kw_fma", [sizes.fma_iters, r, t]))
    runs = _run(_build(cache_dir), cores, jobs, sizes.timeout_s)

    def best(level: str, kind: str) -> float:  # the best copy method counts
        return max(v for k, v in runs.items() if k.startswith(f"{level}/{kind}"))

    cached = next((lv for lv in levels if lv[0] == "L2"), levels[-1])[0]
    details = {"levels": [{"level": n, "capacity_bytes": cap, "bytes": size, "copy_gbs": best(n, "copy"),
                           "read_gbs": best(n, "read")} for n, cap, size in levels],
               "uncached_bytes": uncached, "min_rep_bytes": sizes.min_rep_bytes, "reps": r,
               "fma_iters": sizes.fma_iters, "quick": sizes.quick, "caches": {str(k): v for k, v in caches.items()},
               "runs": {k: round(v, 2) for k, v in runs.items()},
               "method": "best of reps and (copy) of a vector loop, memcpy and non-temporal stores"}
    return Ceilings(device=device, fingerprint_id=fingerprint_id, cores=cores, threads=threads,
                    copy_gbs=best("DRAM", "copy"), read_gbs=best("DRAM", "read"),
                    copy_gbs_cached=best(cached, "copy"), read_gbs_cached=best(cached, "read"), fma_gflops=runs["fma"],
                    measured_at=dt.datetime.now(dt.UTC).isoformat(), llc_bytes=llc, details=details)


def best_of(a: Ceilings, b: Ceilings) -> Ceilings:
    """Two measurements of the same cores and threads, figure by figure the better one: a ceiling
    measured while something else ran comes out low, never high."""
    if (a.device, a.cores, a.threads) != (b.device, b.cores, b.threads):
        raise CeilingError(f"ceilings of {a.device} {a.cores} x{a.threads} and {b.device} {b.cores} x{b.threads} "
                           "are not of the same cores and threads")
    figures = ("copy_gbs", "read_gbs", "copy_gbs_cached", "read_gbs_cached", "fma_gflops")
    levels = {lv["level"]: dict(lv) for lv in a.details.get("levels", ())}
    for lv in b.details.get("levels", ()):
        old = levels.setdefault(lv["level"], dict(lv))
        old.update({k: max(old[k], lv[k]) for k in ("copy_gbs", "read_gbs")})
    details = {**a.details, **b.details, "levels": sorted(levels.values(), key=lambda lv: lv["capacity_bytes"])}
    return dataclasses.replace(b, details=details, **{f: max(getattr(a, f), getattr(b, f)) for f in figures})


def remeasure(c: Ceilings, cache_dir: Path | None = None) -> Ceilings:
    """Measure `c`'s cores and threads again (at its sizes) and keep the better of each figure."""
    sizes = Sizes.tiny() if c.details.get("quick") else Sizes()
    return best_of(c, measure(c.cores, c.threads, fingerprint_id=c.fingerprint_id, device=c.device,
                              sizes=sizes, cache_dir=cache_dir))


def cpu_fingerprint_id(threads: int) -> str:
    """The fingerprint id a CPU evaluation with `threads` threads records (evaluator/cascade.py)."""
    from evaluator import fingerprint

    return fingerprint.fingerprint_id(fingerprint.host("cpu", threads))


def from_device_json(source: str | Path | Mapping[str, Any], fingerprint_id: str | None = None) -> Ceilings:
    """CUDA: the ceilings the GPU device script measured, from its JSON (a path or the object):

        {"device": "cuda", "fingerprint_id": "...", "copy_gbs": 3000.0, "read_gbs": 3200.0,
         "l2_bytes": 52428800, "copy_gbs_cached": 9000.0, "read_gbs_cached": 10000.0,
         "fma_gflops": 60000.0, "tflops": {"fp16": 700.0, "bf16": 700.0, "tf32": 350.0},
         "measured_at": "2026-11-26T10:00:00+00:00"}

    `copy_gbs`: device memory copy (read + write) out of L2; `tflops`: tensor-core throughput per
    dtype (kept in details: the compute ceiling is the fastest of these and fma_gflops, see
    evaluator/roofline.py); `fma_gflops`: fp32 CUDA-core FMA. Cached figures default to the
    uncached ones. evaluator/gpu_ceilings.py measures all of them; Ceilings.to_json reads back too.
    """
    d: dict[str, Any] = dict(json.loads(Path(source).read_text()) if isinstance(source, (str, Path)) else source)
    try:
        copy = float(d["copy_gbs"])
        return Ceilings(device=d.get("device", "cuda"), fingerprint_id=fingerprint_id or d.get("fingerprint_id", ""),
                        cores=(), threads=int(d.get("threads", 0)), copy_gbs=copy,
                        read_gbs=float(d.get("read_gbs", copy)), copy_gbs_cached=float(d.get("copy_gbs_cached", copy)),
                        read_gbs_cached=float(d.get("read_gbs_cached", d.get("read_gbs", copy))),
                        fma_gflops=float(d.get("fma_gflops", 0.0)),
                        measured_at=d.get("measured_at") or dt.datetime.now(dt.UTC).isoformat(),
                        llc_bytes=int(d.get("l2_bytes", d.get("llc_bytes", 0))),
                        details={**dict(d.get("details") or {}), "source": "device script",
                                 "tflops": dict(d.get("tflops") or (d.get("details") or {}).get("tflops") or {}),
                                 **{k: d[k] for k in ("quick", "device_info", "errors") if k in d}})
    except (KeyError, TypeError, ValueError) as e:
        raise CeilingError(f"not a device ceilings JSON: {e}") from None
