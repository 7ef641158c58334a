"""Speed of light on a CUDA device: device-memory and L2 bandwidth, fp32 FMA and tensor-core rates.

Small CUDA kernels, built by the fast path's compiler (nvcc, plain shared library), run in a fresh
interpreter that holds the GPU alone: copy (bytes read + written) and read-only bandwidth over a
working set several times the L2 and over one a quarter of it (loads through L2, not L1), and
fp32 FMA throughput (independent chains on every SM). Tensor-core rates are PyTorch's matrix
products (cuBLAS) on random 8192-square operands per dtype: fp16, bf16, tf32, and fp8 where
torch._scaled_mm runs. Each figure is the best of its repetitions, timed with CUDA events: this
is kernelwright's own trusted code, so the device's clock is a fact here, unlike a candidate's.

The JSON the child prints is what `evaluator.ceilings.from_device_json` reads, with the device
description the evaluation fingerprint is made of, so the figures are stored under the id the
GPU's evaluations record. `python -m evaluator.gpu_ceilings [--out FILE] [--quick]` runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SOURCE = r"""
#include <cuda_runtime.h>
#include <cstdint>

__global__ void k_copy(float4* a, float4* b, int64_t n, int passes) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int p = 0; p < passes; ++p) {  // back and forth: no pass repeats the one before
    const float4* src = (p & 1) ? b : a;
    float4* dst = (p & 1) ? a : b;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = __ldcg(src + i);
  }
}

__global__ void k_read(const float4* a, int64_t n, int passes, float* sink) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int p = 0; p < passes; ++p)
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride) {
      float4 v = __ldcg(a + i);
      s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
    }
  if (s.x + s.y + s.z + s.w == -1.0f) sink[0] = s.x;  // never true (the data is positive): keeps the loads
}

#define CHAINS 8
__global__ void k_fma(int64_t iters, float* sink) {
  float x[CHAINS];
  for (int k = 0; k < CHAINS; ++k) x[k] = 1.0f + 1e-3f * (k + threadIdx.x);
  const float m = 0.9999999f, c = 1e-7f;
  for (int64_t it = 0; it < iters; ++it) {
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) x[k] = fmaf(x[k], m, c);
  }
  float s = 0.f;
  for (int k = 0; k < CHAINS; ++k) s += x[k];
  if (s == -1.0f) sink[0] = s;
}

static int grid() {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms * 8;
}

// best GB/s of `reps` timed launches after one untimed; -1 on any CUDA error
static double timed(int reps, double bytes, void (*launch)(void*), void* arg) {
  cudaEvent_t t0, t1;
  if (cudaEventCreate(&t0) != cudaSuccess || cudaEventCreate(&t1) != cudaSuccess) return -1;
  double best = 0;
  for (int r = -1; r < reps; ++r) {
    cudaEventRecord(t0);
    launch(arg);
    cudaEventRecord(t1);
    if (cudaEventSynchronize(t1) != cudaSuccess) return -1;
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    if (r >= 0 && ms > 0 && bytes / (ms * 1e-3) / 1e9 > best) best = bytes / (ms * 1e-3) / 1e9;
  }
  cudaEventDestroy(t0); cudaEventDestroy(t1);
  return cudaGetLastError() == cudaSuccess ? best : -1;
}

struct Args { float4* a; float4* b; int64_t n; int passes; float* sink; int64_t iters; };
static void launch_copy(void* p) { Args* g = (Args*)p; k_copy<<<grid(), 256>>>(g->a, g->b, g->n, g->passes); }
static void launch_read(void* p) { Args* g = (Args*)p; k_read<<<grid(), 256>>>(g->a, g->n, g->passes, g->sink); }
static void launch_fma(void* p) { Args* g = (Args*)p; k_fma<<<grid() * 4, 256>>>(g->iters, g->sink); }

extern "C" int64_t kw_l2_bytes() {
  int dev = 0, l2 = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return -1;
  cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
  return l2;
}

// kind 0: copy (two buffers of nbytes each), 1: read; returns GB/s
extern "C" double kw_bandwidth(int64_t nbytes, int64_t passes, int64_t reps, int64_t kind) {
  Args g = {nullptr, nullptr, nbytes / 16, (int)passes, nullptr, 0};
  if (cudaMalloc(&g.a, g.n * 16) != cudaSuccess) return -1;
  if ((kind == 0 && cudaMalloc(&g.b, g.n * 16) != cudaSuccess) || cudaMalloc(&g.sink, 16) != cudaSuccess) {
    cudaFree(g.a); return -1;
  }
  cudaMemset(g.a, 0x3f, g.n * 16);  // 0x3f3f3f3f: a positive float
  if (g.b) cudaMemset(g.b, 0x3f, g.n * 16);
  double moved = (kind == 0 ? 2.0 : 1.0) * 16.0 * (double)g.n * (double)passes;
  double best = timed((int)reps, moved, kind == 0 ? launch_copy : launch_read, &g);
  cudaFree(g.a); cudaFree(g.b); cudaFree(g.sink);
  return best;
}

extern "C" double kw_fma(int64_t iters, int64_t reps) {
  Args g = {nullptr, nullptr, 0, 0, nullptr, iters};
  if (cudaMalloc(&g.sink, 16) != cudaSuccess) return -1;
  double flops = 2.0 * CHAINS * (double)iters * grid() * 4 * 256;  // GFLOP/s: "bytes" is FLOPs here
  double best = timed((int)reps, flops, launch_fma, &g);
  cudaFree(g.sink);
  return best;
}
"""

# Runs in a fresh interpreter holding the GPU: the kernels above, then PyTorch's matrix products.
_CHILD = r"""
import ctypes, json, sys
path, quick = sys.argv[1], sys.argv[2] == "1"
import torch
if not torch.cuda.is_available():
    print(json.dumps({"error": "no CUDA device visible"})); sys.exit(0)
lib = ctypes.CDLL(path)
lib.kw_l2_bytes.restype = ctypes.c_int64
lib.kw_bandwidth.restype, lib.kw_bandwidth.argtypes = ctypes.c_double, [ctypes.c_int64] * 4
lib.kw_fma.restype, lib.kw_fma.argtypes = ctypes.c_double, [ctypes.c_int64] * 2
l2 = lib.kw_l2_bytes()
reps = 3 if quick else 10
dram = (256 << 20) if quick else (2 << 30)  # per buffer: many times the L2
cached = max(l2 // 8, 1 << 20)  # two buffers: a quarter of the L2
passes = max(1, (512 << 20) // cached) if not quick else 8
out = {"l2_bytes": l2,
       "copy_gbs": lib.kw_bandwidth(dram, 1, reps, 0), "read_gbs": lib.kw_bandwidth(dram, 1, reps, 1),
       "copy_gbs_cached": lib.kw_bandwidth(cached, passes, reps, 0),
       "read_gbs_cached": lib.kw_bandwidth(2 * cached, passes, reps, 1),
       "fma_gflops": lib.kw_fma(2000 if quick else 20000, reps)}
n = 2048 if quick else 8192
def best_tflops(fn):
    fn(); torch.cuda.synchronize()
    t0, t1, best = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), 0.0
    for _ in range(reps):
        t0.record(); fn(); t1.record(); t1.synchronize()
        best = max(best, 2.0 * n ** 3 / (t0.elapsed_time(t1) * 1e-3) / 1e12)
    return best
tflops, errors = {}, {}
for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("tf32", torch.float32)):
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    tflops[name] = best_tflops(lambda: a @ b)
try:
    a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()
    one = torch.ones((), device="cuda")
    tflops["fp8"] = best_tflops(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
except Exception as e:  # an older GPU or torch: no fp8 figure, and why
    errors["fp8"] = f"{type(e).__name__}: {e}"[:200]
p = torch.cuda.get_device_properties(0)
import importlib.metadata as md
try:
    triton = md.version("triton")
except md.PackageNotFoundError:
    triton = None
out.update(tflops=tflops, errors=errors, quick=quick,
           device_info={"gpu": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                        "gpu_memory": p.total_memory, "cuda": torch.version.cuda, "triton": triton})
print(json.dumps(out))
"""


_INFO = r"""
import json, torch, importlib.metadata as md
if not torch.cuda.is_available():
    print(json.dumps({"error": "no CUDA device visible"}))
else:
    p = torch.cuda.get_device_properties(0)
    try:
        triton = md.version("triton")
    except md.PackageNotFoundError:
        triton = None
    print(json.dumps({"gpu": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                      "gpu_memory": p.total_memory, "cuda": torch.version.cuda, "triton": triton}))
"""


def fingerprint_id(threads: int, timeout_s: float = 120.0) -> str:
    """The fingerprint id this GPU's evaluations record, read in a child (the supervisor never
    opens a CUDA context of its own). Raises CeilingError (one line)."""
    from evaluator import fingerprint
    from evaluator.ceilings import CeilingError

    try:
        proc = subprocess.run([sys.executable, "-c", _INFO], capture_output=True, text=True, timeout=timeout_s, check=False)
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError):
        raise CeilingError("could not read the GPU's description (torch.cuda in a child process)") from None
    if "error" in info:
        raise CeilingError(info["error"])
    return fingerprint.with_device(fingerprint.host("cuda", threads), info)["id"]


def build(cache_dir: Path) -> str:
    """The ceiling kernels as a shared library (raises CeilingError with the compiler's last line)."""
    from evaluator.ceilings import CeilingError
    from sandbox.compiler import CompilerConfig, CompileSpec
    from sandbox.compiler import build as compile_source

    result = compile_source(CompileSpec(source=SOURCE, lang="cuda"), CompilerConfig(cache_dir=Path(cache_dir) / "fastpath"))
    if not result.ok:
        raise CeilingError("the GPU ceiling kernels failed to compile: "
                           + (result.log.strip().splitlines() or ["?"])[-1])
    return result.path


def measure_json(cache_dir: Path, quick: bool = False, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run the probe; its JSON (from_device_json's input) with the fingerprint id of this GPU's
    evaluations at `threads` = 1 added by `measure`. Raises CeilingError (one line)."""
    from evaluator.ceilings import CeilingError

    path = build(cache_dir)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, path, "1" if quick else "0"], capture_output=True,
                              text=True, timeout=timeout_s, env=dict(os.environ), check=False)
    except subprocess.TimeoutExpired:
        raise CeilingError(f"measuring the GPU's ceilings took over {timeout_s:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise CeilingError("the GPU ceiling probe failed: "
                           + (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    out = json.loads(lines[-1])
    if "error" in out:
        raise CeilingError(out["error"])
    bad = [k for k in ("copy_gbs", "read_gbs", "copy_gbs_cached", "read_gbs_cached", "fma_gflops") if out[k] <= 0]
    if bad:
        raise CeilingError(f"the GPU ceiling probe failed on {', '.join(bad)} (a CUDA error or no memory)")
    return out


def measure(threads: int, cache_dir: Path, quick: bool = False) -> Any:
    """The GPU's Ceilings, under the fingerprint id its evaluations with `threads` record."""
    from evaluator import ceilings, fingerprint

    out = measure_json(cache_dir, quick)
    fp = fingerprint.with_device(fingerprint.host("cuda", threads), out["device_info"])
    return ceilings.from_device_json({**out, "device": "cuda", "threads": threads}, fingerprint_id=fp["id"])


def main(argv: list[str] | None = None) -> int:
    from evaluator.ceilings import CeilingError

    ap = argparse.ArgumentParser(prog="python -m evaluator.gpu_ceilings", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON here (`kernelwright device --import` reads it)")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (a check, not ceilings)")
    ap.add_argument("--threads", type=int, default=1, help="the thread count of the evaluations to store them for")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "kernelwright")
    a = ap.parse_args(argv)
    try:
        c = measure(a.threads, a.cache_dir, a.quick)
    except CeilingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(c.to_json(), indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
