"""Candidates out of LLM answers, and the specific reasons when there is none."""
from __future__ import annotations

import ast

import pytest

from agent.loop.parse import blocks, extract

GOOD = '''import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        return x
'''
USES_KERNEL_SOURCE = '''import torch.nn as nn
from sandbox import fastpath

_lib = fastpath.compile(KERNEL_SOURCE, lang="cpp")


class ModelNew(nn.Module):
    def forward(self, x):
        return x
'''
CPP = '''#include <cstdint>
extern "C" void scale(float* out, const float* x, int64_t n) { for (int64_t i = 0; i < n; ++i) out[i] = 2 * x[i]; }
'''


def fenced(code: str, tag: str = "python") -> str:
    return f"```{tag}\n{code}```\n"


def test_prose_around_the_code():
    text = "## Analysis\nMemory bound.\n\n## Plan\n- fuse\n\n" + fenced(GOOD) + "\nThis should be 2x faster."
    e = extract(text)
    assert e.ok and e.source == GOOD and e.blocks == 1


@pytest.mark.parametrize("tag", ["python", "py", "Python", "python3", ""])
def test_python_tags_and_untagged(tag):
    e = extract("Here:\n" + fenced(GOOD, tag))
    assert e.source == GOOD


def test_last_block_defining_modelnew_wins():
    draft = GOOD.replace("return x", "return x  # draft")
    final = GOOD.replace("return x", "return x  # final")
    text = fenced(draft) + "Better:\n" + fenced(final) + "Usage:\n" + fenced("model = ModelNew()\nprint(model)\n")
    e = extract(text)
    assert e.source == final and e.blocks == 3
    assert "block 2 of 3" in e.reason


def test_untagged_block_that_is_not_the_candidate_is_ignored():
    text = fenced(GOOD) + fenced("$ kernelwright eval task.py cand.py\n", "")
    assert extract(text).source == GOOD


def test_cpp_block_becomes_kernel_source():
    text = "Kernel:\n" + fenced(CPP, "cpp") + "Wrapper:\n" + fenced(USES_KERNEL_SOURCE)
    e = extract(text)
    assert e.ok, e.reason
    module = ast.parse(e.source)
    first = module.body[0]
    assert isinstance(first, ast.Assign) and first.targets[0].id == "KERNEL_SOURCE"
    assert ast.literal_eval(first.value) == CPP
    assert "KERNEL_SOURCE from block 1" in e.reason


@pytest.mark.parametrize("tag", ["cuda", "cu"])
def test_cuda_block_becomes_cuda_source(tag):
    code = USES_KERNEL_SOURCE.replace("KERNEL_SOURCE", "CUDA_SOURCE")
    kernel = "__global__ void k(float* x) {}\n"
    e = extract(fenced(kernel, tag) + fenced(code))
    first = ast.parse(e.source).body[0]
    assert first.targets[0].id == "CUDA_SOURCE" and ast.literal_eval(first.value) == kernel


def test_cuda_code_tagged_cpp_still_found():
    code = USES_KERNEL_SOURCE.replace("KERNEL_SOURCE", "CUDA_SOURCE")
    e = extract(fenced("__global__ void k() {}\n", "c++") + fenced(code))
    assert e.ok and "CUDA_SOURCE = r'''__global__" in e.source


def test_kernel_source_with_triple_quotes_and_backslashes_round_trips():
    nasty = "// ''' and \"\"\" in a comment\n#define S \"a\\\\\"\nconst char* q = \"\\'\";\n"
    e = extract(fenced(nasty, "cpp") + fenced(USES_KERNEL_SOURCE))
    assert e.ok, e.reason
    first = ast.parse(e.source).body[0]
    assert ast.literal_eval(first.value) == nasty


def test_defined_kernel_source_is_left_alone():
    code = 'KERNEL_SOURCE = "int x;"\n' + USES_KERNEL_SOURCE
    e = extract(fenced(CPP, "cpp") + fenced(code))
    assert e.source == code


def test_kernel_source_after_future_import_and_docstring():
    code = '"""doc"""\nfrom __future__ import annotations\n' + USES_KERNEL_SOURCE
    e = extract(fenced(CPP, "cpp") + fenced(code))
    lines = e.source.splitlines()
    assert lines[0] == '"""doc"""' and lines[1].startswith("from __future__")
    assert lines[2].startswith("KERNEL_SOURCE = ")
    ast.parse(e.source)


def test_kernel_source_used_but_missing():
    e = extract(fenced(USES_KERNEL_SOURCE))
    assert e.source is None and e.reason.startswith("KERNEL_SOURCE is used but not defined")


def test_no_code():
    e = extract("I would use shared memory tiling and vectorized loads.")
    assert e.source is None and e.reason == "no fenced code block" and e.blocks == 0


def test_no_modelnew():
    e = extract(fenced("import torch\nclass Model(torch.nn.Module):\n    pass\n"))
    assert e.source is None and e.reason == "no class ModelNew in the code" and e.blocks == 1


def test_only_a_cpp_block():
    e = extract(fenced(CPP, "cpp"))
    assert e.source is None and e.reason == "no class ModelNew in the code"


def test_syntax_error_names_the_line():
    broken = GOOD.replace("def forward(self, x):", "def forward(self, x)")
    e = extract(fenced(broken))
    assert e.source is None
    assert e.reason.startswith("syntax error at line 6:"), e.reason


def test_truncated_fence():
    text = "Plan: tile it.\n```python\n" + GOOD[:60]
    e = extract(text)
    assert e.source is None and e.reason == "truncated: unclosed code fence" and e.blocks == 0


def test_truncated_final_answer_falls_back_to_a_complete_earlier_one():
    text = fenced(GOOD) + "Even faster:\n```python\nimport torch\nclass ModelNew("
    e = extract(text)
    assert e.source == GOOD and e.blocks == 1


def test_truncated_kernel_block_after_the_wrapper():
    e = extract(fenced(USES_KERNEL_SOURCE) + "```cpp\n#include <cstdint>\nextern \"C\" void f(")
    assert e.reason == "truncated: unclosed code fence"


def test_unfenced_answer_that_is_only_code():
    assert extract(GOOD).source == GOOD


def test_longer_fence_keeps_inner_backticks():
    code = GOOD + 'DOC = """\n```\nnot a fence end\n```\n"""\n'
    e = extract("````python\n" + code + "````\n")
    assert e.source == code


def test_indented_block_in_a_list_item():
    indented = "".join("   " + line if line.strip() else line for line in GOOD.splitlines(keepends=True))
    e = extract("1. The code:\n   ```python\n" + indented + "   ```\n")
    assert e.source == GOOD


def test_blocks_reports_tags_and_closure():
    found = blocks("```cpp\nint x;\n```\ntext\n```python\nx = 1\n")
    assert [(b.tag, b.closed) for b in found] == [("cpp", True), ("python", False)]
