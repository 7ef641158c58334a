"""The supervisor compiles candidate source outside the jail: a build must not read its files.
Each attack below would quote a host secret into the verdict (or copy it into the library the
worker loads) if the compiler ran it; each is refused before the compiler runs."""
from __future__ import annotations

import pytest

from sandbox.buildscreen import flag_problem, source_problem

FAST = '''
import torch
import torch.nn as nn
from sandbox import fastpath

_lib = fastpath.compile(r"""
#include <cstdint>
HOSTILE
extern "C" void k(float* out, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * x[i] - 0.f;
}
""")


class ModelNew(nn.Module):
    def forward(self, x):
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.k(out, x, x.numel())
        return out
'''


@pytest.mark.parametrize("hostile", [
    '#include "{secret}"',
    "#  include <{secret}>",
    "%:include \"{secret}\"",  # a digraph for '#'
    '#inc\\\nlude "{secret}"',  # a line continuation inside the directive
    '#define P "{secret}"\n#include P',  # a computed include
    '#include "../../../../../../../..{secret}"',
    '#if __has_include("{secret}")\n#endif',
    'asm(".incbin \\"{secret}\\"");',
    '__asm__(".INCLUDE \\"{secret}\\"");',
    '#embed "{secret}"',
])
def test_a_host_file_is_never_read(hostile, tmp_path):
    secret = tmp_path / "secret.txt"
    why = source_problem(hostile.format(secret=secret))
    assert why and "\n" not in why


def test_ordinary_sources_and_flags_pass():
    ok = '#include <cstdint>\n#include <torch/extension.h>\n#include "cuda_fp16.h"\n# include <cuda/std/cmath>\n'
    assert source_problem(ok, "__global__ void k() {}", "#if __has_include(<omp.h>)\n#endif") is None
    assert flag_problem(["-O3", "-march=native", "--use_fast_math", "-Xcompiler=-fopenmp", "-lcublas", "-DBLOCK=64",
                         "-gencode=arch=compute_90,code=sm_90", "-Wl,-rpath,$ORIGIN", "-std=c++20"]) is None


@pytest.mark.parametrize("flag", ["-I/root", "-isystem", "-include/etc/passwd", "-imacros", "-Xcompiler=-I/root",
                                  "-Xcompiler,-include,/x", "@/etc/flags", "-fplugin=/tmp/evil.so", "-o/tmp/x",
                                  "-L/root", "-Wl,-T,/x.ld", "--sysroot=/root", "-B/tmp", "a\nb"])
def test_flags_that_read_or_write_host_paths_are_refused(flag):
    assert flag_problem([flag]), flag


def test_the_evaluator_refuses_before_compiling(evaluator, small_task, tmp_path):
    secret = tmp_path / "host_secret.h"
    token = "kw_secret_7f3a9c_do_not_leak"
    secret.write_text(f"{token} {token};\n")
    for hostile, words in ((f'#include "{secret}"', "include of"), (f'asm(".incbin \\"{secret}\\"");', ".incbin")):
        v = evaluator.evaluate(small_task, FAST.replace("HOSTILE", hostile))
        assert v.status.value == "compile_error" and words in v.reason, (v.status, v.reason)
        assert token not in v.reason and token not in v.log
    clean = evaluator.evaluate(small_task, FAST.replace("HOSTILE", "#include <cmath>"))
    assert clean.status.value != "compile_error", clean.reason  # the screen lets an ordinary build through
