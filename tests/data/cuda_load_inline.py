"""A KernelBench-style CUDA candidate (load_inline); compiled here with nvcc, run only on GPUs."""
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cuda_source = r"""
#include <torch/extension.h>
#include <cuda_runtime.h>

__global__ void softmax_rows_kernel(const float* __restrict__ x, float* __restrict__ out, int rows, int cols) {
    int r = blockIdx.x;
    if (r >= rows) return;
    extern __shared__ float buf[];
    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, x[r * cols + c]);
    buf[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (threadIdx.x < s) buf[threadIdx.x] = fmaxf(buf[threadIdx.x], buf[threadIdx.x + s]); __syncthreads(); }
    m = buf[0];
    __syncthreads();
    float sum = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += __expf(x[r * cols + c] - m);
    buf[threadIdx.x] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s]; __syncthreads(); }
    float inv = 1.f / buf[0];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = expf(x[r * cols + c] - m) * inv;
}

torch::Tensor softmax_rows(torch::Tensor x) {
    auto out = torch::empty_like(x);
    int rows = x.size(0), cols = x.size(1);
    softmax_rows_kernel<<<rows, 256, 256 * sizeof(float)>>>(x.data_ptr<float>(), out.data_ptr<float>(), rows, cols);
    return out;
}
"""
cpp_source = "torch::Tensor softmax_rows(torch::Tensor x);"

ext = load_inline(name="kw_cuda_softmax", cpp_sources=cpp_source, cuda_sources=cuda_source,
                  functions=["softmax_rows"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return ext.softmax_rows(x.contiguous())
