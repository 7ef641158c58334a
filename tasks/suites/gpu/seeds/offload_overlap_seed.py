"""Streamed host-to-device transfer overlapped with a fused kernel.

The input is cut into PIECES pieces. A copy stream issues every piece's cudaMemcpyAsync back to
back (pinned memory, so the copy engine runs at full PCIe speed without the CPU) and records an
event after each; a compute stream waits for piece i's event and runs one fused kernel on it,
tanh and the whole Horner polynomial in registers, in place in the output buffer the piece was
copied into. So piece i computes while piece i+1 is on the bus, and the total is the copy time
plus one piece's compute. Both streams first wait for the caller's stream (the output buffer
was allocated in its order) and the caller's stream then waits for the last kernel, so the call
behaves as if everything ran on the caller's stream. The polynomial is evaluated with
separately rounded multiplies and adds, as the reference's eager ops do (no FMA contraction).
"""
import torch
import torch.nn as nn

from sandbox import fastpath

THREADS = 256
PIECES = 16
KNOBS = {"THREADS": [128, 256, 512], "PIECES": [4, 8, 16, 32, 64]}

SRC = r'''
#include <cstdint>
#include <cuda_runtime.h>

#define MAX_DEGREE 64

__global__ void __launch_bounds__(THREADS) tanh_poly_inplace_kernel(float* __restrict__ y,
                                                                     const float* __restrict__ coeffs,
                                                                     int degree, int64_t n) {
    __shared__ float c[MAX_DEGREE + 1];
    for (int i = threadIdx.x; i <= degree; i += THREADS) c[i] = coeffs[i];
    __syncthreads();
    const int64_t stride = (int64_t)gridDim.x * THREADS;
    for (int64_t i = (int64_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += stride) {
        const float t = tanhf(y[i]);
        float acc = c[degree];
        for (int k = degree - 1; k >= 0; --k) acc = __fadd_rn(__fmul_rn(acc, t), c[k]);
        y[i] = acc;
    }
}

// This library links its own CUDA runtime, whose current device starts at 0: follow the device
// of the output tensor (torch's), so the launch lands on the stream's device.
static int follow_device(const void* device_ptr) {
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, device_ptr) != cudaSuccess) return (int)cudaGetLastError();
    return attr.type == cudaMemoryTypeDevice ? (int)cudaSetDevice(attr.device) : 0;
}

struct Pipeline {
    cudaStream_t copy = nullptr, compute = nullptr;
    cudaEvent_t ready = nullptr, done = nullptr;
    cudaEvent_t piece[PIECES] = {};
    int sms = 0;
};

static Pipeline* pipeline(int* err) {
    static Pipeline p;
    static bool made = false;
    if (!made) {
        int dev = 0;
        *err = (int)cudaGetDevice(&dev);
        if (!*err) *err = (int)cudaDeviceGetAttribute(&p.sms, cudaDevAttrMultiProcessorCount, dev);
        if (!*err) *err = (int)cudaStreamCreateWithFlags(&p.copy, cudaStreamNonBlocking);
        if (!*err) *err = (int)cudaStreamCreateWithFlags(&p.compute, cudaStreamNonBlocking);
        if (!*err) *err = (int)cudaEventCreateWithFlags(&p.ready, cudaEventDisableTiming);
        if (!*err) *err = (int)cudaEventCreateWithFlags(&p.done, cudaEventDisableTiming);
        for (int i = 0; i < PIECES && !*err; ++i)
            *err = (int)cudaEventCreateWithFlags(&p.piece[i], cudaEventDisableTiming);
        if (*err) return nullptr;
        made = true;
    }
    return &p;
}

extern "C" int tanh_poly_streamed(float* out, const float* x_host, const float* coeffs, int64_t n, int64_t degree,
                                  cudaStream_t stream) {
    if (degree < 0 || degree > MAX_DEGREE) return -1;
    if (n <= 0) return 0;
    int err = follow_device(out);
    if (err) return err;
    Pipeline* p = pipeline(&err);
    if (!p) return err;
    // pieces of whole 4 KB pages, at most PIECES of them
    int64_t piece = (n + PIECES - 1) / PIECES;
    piece = (piece + 1023) / 1024 * 1024;
    if ((err = (int)cudaEventRecord(p->ready, stream))) return err;
    if ((err = (int)cudaStreamWaitEvent(p->copy, p->ready, 0))) return err;
    if ((err = (int)cudaStreamWaitEvent(p->compute, p->ready, 0))) return err;
    int i = 0;
    for (int64_t lo = 0; lo < n; lo += piece, ++i) {
        const int64_t len = n - lo < piece ? n - lo : piece;
        if ((err = (int)cudaMemcpyAsync(out + lo, x_host + lo, len * sizeof(float), cudaMemcpyHostToDevice, p->copy)))
            return err;
        if ((err = (int)cudaEventRecord(p->piece[i], p->copy))) return err;
        if ((err = (int)cudaStreamWaitEvent(p->compute, p->piece[i], 0))) return err;
        int64_t blocks = (len + THREADS - 1) / THREADS;
        const int64_t cap = (int64_t)p->sms * (2048 / THREADS);  // one full wave, grid-stride beyond
        if (blocks > cap) blocks = cap;
        tanh_poly_inplace_kernel<<<(unsigned)blocks, THREADS, 0, p->compute>>>(out + lo, coeffs, (int)degree, len);
        if ((err = (int)cudaGetLastError())) return err;
    }
    if ((err = (int)cudaEventRecord(p->done, p->compute))) return err;
    return (int)cudaStreamWaitEvent(stream, p->done, 0);
}
'''

_lib = None


def _library():
    global _lib
    if _lib is None:
        _lib = fastpath.compile(SRC, lang="cuda", arch="sm_90", defines={"THREADS": THREADS, "PIECES": PIECES})
    return _lib


class ModelNew(nn.Module):
    def __init__(self, degree: int):
        super().__init__()
        self.register_buffer("coeffs", 1.0 / torch.arange(1, degree + 2, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        coeffs = self.coeffs.contiguous()
        out = torch.empty(x.shape, dtype=x.dtype, device=coeffs.device)
        err = _library().tanh_poly_streamed(out, x, coeffs, x.numel(), coeffs.numel() - 1)
        if err != 0:
            raise RuntimeError(f"tanh_poly_streamed: CUDA error {err}")
        return out
