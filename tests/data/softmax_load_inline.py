"""A KernelBench-style candidate: C++ built with torch.utils.cpp_extension.load_inline."""
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
#include <torch/extension.h>
#include <cmath>

torch::Tensor softmax_rows(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* in = xc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const int64_t rows = xc.size(0), cols = xc.size(1);
    for (int64_t r = 0; r < rows; ++r) {
        float m = -INFINITY;
        for (int64_t c = 0; c < cols; ++c) m = std::max(m, in[r * cols + c]);
        double s = 0.0;
        for (int64_t c = 0; c < cols; ++c) { o[r * cols + c] = std::exp(in[r * cols + c] - m); s += o[r * cols + c]; }
        for (int64_t c = 0; c < cols; ++c) o[r * cols + c] = (float)(o[r * cols + c] / s);
    }
    return out;
}
"""

softmax_ext = load_inline(name="kw_test_softmax", cpp_sources=cpp_source, functions=["softmax_rows"],
                          extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return softmax_ext.softmax_rows(x)
