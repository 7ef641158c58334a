"""A scripted model's answer to any KernelBench prompt: the reference's PyTorch forward kept, its
output passed through the candidate's own C++ copy kernel. What a lazy partial replacement looks
like: ok under the kernelbench policy (flagged lazy), rejected under strict."""
from __future__ import annotations

import re

COPY = '''
import torch
import torch.nn as nn
from sandbox import fastpath

_SRC = r"""
#include <cstdint>
extern "C" void copy_out(float* out, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i];
}
"""
_lib = fastpath.compile(_SRC)


class ModelNew(nn.Module):
    def __init__(self, *args):
        super().__init__()
        self.inner = _Torch(*args)

    def forward(self, *args):
        y = self.inner(*args).contiguous()
        out = torch.empty_like(y)
        _lib.copy_out(out, y, y.numel())
        return out
'''


def reference_of(prompt: str) -> str:
    """The task file a prompt shows verbatim (agent/loop/prompts.py's Reference section)."""
    m = re.search(r"## Reference \(the task file, verbatim\)\n(`{3,})python\n(.*?)\n\1", prompt, re.DOTALL)
    assert m, "no reference in the prompt"
    return m.group(2)


def lazy_answer(prompt: str) -> str:
    """The answer, fenced: the reference renamed (not imported, not subclassed) plus the wrapper."""
    ref = re.sub(r"\bclass Model\(", "class _Torch(", reference_of(prompt))
    ref = re.sub(r"super\(Model, self\)", "super(_Torch, self)", ref)
    return "```python\n" + ref + "\n" + COPY + "\n```"
