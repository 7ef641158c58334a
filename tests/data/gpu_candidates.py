"""CUDA candidates for the GPU tests (softmax over rows): honest slow, honest fast, and cheats.

The slow kernel gives each row to one thread, so it is honestly slower than PyTorch's: any
variation of it that comes out `ok` with a speedup of 1 or more cheated.
"""

KERNELS = r'''
#include <cuda_runtime.h>
#include <cstdint>
#include <math.h>

__global__ void softmax_row_per_thread(float* out, const float* x, int64_t rows, int64_t cols) {
    int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * cols;
    float* o = out + r * cols;
    float m = -INFINITY;
    for (int64_t c = 0; c < cols; ++c) m = fmaxf(m, xr[c]);
    float s = 0.f;
    for (int64_t c = 0; c < cols; ++c) s += expf(xr[c] - m);
    for (int64_t c = 0; c < cols; ++c) o[c] = expf(xr[c] - m) / s;
}

__global__ void softmax_row_per_block(float* out, const float* x, int64_t rows, int64_t cols) {
    __shared__ float buf[256];
    int64_t r = blockIdx.x;
    const float* xr = x + r * cols;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, xr[c]);
    buf[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] = fmaxf(buf[threadIdx.x], buf[threadIdx.x + s]);
        __syncthreads();
    }
    m = buf[0];
    __syncthreads();
    float sum = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(xr[c] - m);
    buf[threadIdx.x] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    float inv = 1.f / buf[0];
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = expf(xr[c] - m) * inv;
}

extern "C" void slow_softmax(float* out, const float* x, int64_t rows, int64_t cols, cudaStream_t stream) {
    softmax_row_per_thread<<<(rows + 31) / 32, 32, 0, stream>>>(out, x, rows, cols);
}

extern "C" void fast_softmax(float* out, const float* x, int64_t rows, int64_t cols, cudaStream_t stream) {
    softmax_row_per_block<<<rows, 256, 0, stream>>>(out, x, rows, cols);
}

extern "C" void hidden_stream_softmax(float* out, const float* x, int64_t rows, int64_t cols) {
    static cudaStream_t side = nullptr;
    if (!side) cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking);
    for (int rep = 0; rep < 20; ++rep)  /* real work, on a stream the timer does not watch */
        softmax_row_per_thread<<<(rows + 31) / 32, 32, 0, side>>>(out, x, rows, cols);
}

__global__ void nothing(float* out) {}
extern "C" void noop(float* out, cudaStream_t stream) { nothing<<<1, 1, 0, stream>>>(out); }
'''

HEADER = '''
import torch
import torch.nn as nn
from sandbox import fastpath
'''


def cuda(forward: str, prelude: str = "") -> str:
    return (HEADER + prelude + f"\nSRC = r'''{KERNELS}'''\n_lib = fastpath.compile(SRC, lang=\"cuda\")\n\n"
            "class ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n\n"
            "    def forward(self, x):" + forward + "\n")


SLOW = cuda("\n        out = torch.empty_like(x)\n        _lib.slow_softmax(out, x, x.shape[0], x.shape[1])\n        return out")
FAST = cuda("\n        out = torch.empty_like(x)\n        _lib.fast_softmax(out, x, x.shape[0], x.shape[1])\n        return out")
HIDDEN_STREAM = cuda("\n        out = torch.empty_like(x)\n        _lib.hidden_stream_softmax(out, x, x.shape[0], x.shape[1])\n        return out")
LAZY = cuda("\n        out = torch.empty_like(x)\n        _lib.fast_softmax(out, x, x.shape[0], x.shape[1])\n        return out.as_subclass(Lazy)",
            prelude="\nclass Lazy(torch.Tensor):\n    pass\n")
UNWRITTEN = cuda("\n        out = torch.empty_like(x)\n        _lib.noop(out)\n        return out")
THREAD = cuda('''
        out = torch.empty_like(x)
        def late():
            time.sleep(0.02)
            _lib.slow_softmax(out, x, x.shape[0], x.shape[1])
        threading.Thread(target=late).start()
        return out''', prelude="import threading, time\n")

TRITON = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl

BLOCK = 512
KNOBS = {"BLOCK": [512, 1024]}


@triton.jit
def softmax_kernel(out_ptr, x_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=-float("inf"))
    x = x - tl.max(x, axis=0)
    e = tl.exp(x)
    tl.store(out_ptr + row * cols + offs, e / tl.sum(e, axis=0), mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        out = torch.empty_like(x)
        softmax_kernel[(x.shape[0],)](out, x, x.shape[1], BLOCK=max(BLOCK, triton.next_power_of_2(x.shape[1])))
        return out
'''
