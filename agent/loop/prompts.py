"""The prompts: plain data in, chat messages out.

Three asks share one frame (the task verbatim, the target device, the candidate contract, the
fast-path API, the rules): a first kernel, a faster kernel shown earlier candidates with their
measured speedups (contrastive, after CUDA-L1), and a repair of a broken candidate. The same
inputs always give the same messages; exemplar sources and logs are capped so a prompt stays
bounded however long the history.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from evaluator import rules as policy_rules
from evaluator import static


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """An earlier candidate for this task and what the evaluator measured."""

    candidate_id: str
    source: str
    status: str  # a verdict status: ok, compile_error, runtime_error, timeout, incorrect, rejected
    speedup: float | None
    reason: str = ""
    log: str = ""  # compiler output or traceback
    resources: str = ""  # ptxas register / shared memory report
    peak_fraction: float | None = None  # share of the machine's peak reached (evaluator/roofline.py)
    bound: str | None = None  # memory or compute
    reference_peak_fraction: float | None = None  # the reference's, in the same evaluation


@dataclasses.dataclass(frozen=True)
class Target:
    """Facts about the device the kernels will run on."""

    device: str  # "cpu" or "cuda"
    facts: tuple[str, ...] = ()
    policy: str = "strict"  # the evaluation policy whose rules the prompt states (evaluator/rules.py)


@dataclasses.dataclass(frozen=True)
class Limits:
    source_chars: int = 8000  # per exemplar source
    log_chars: int = 4000  # per compiler log or traceback
    reason_chars: int = 1000
    exemplars: int = 8  # the fastest ones are kept
    negatives: int = 4


BASELINE = "PyTorch eager"

SYSTEM = """You are an expert performance engineer who writes fast, correct compute kernels in C++, \
CUDA and Triton. You rewrite PyTorch reference models as custom kernels that compute exactly the same \
result, faster, on the given device. Your kernels are compiled, checked against the reference on \
several input shapes with fresh random data, and timed; any shortcut that fakes the result or the \
timing is detected and rejected."""

CONTRACT = """Write a Python file that defines `class ModelNew(nn.Module)` with the same constructor \
arguments and the same forward signature as `Model`, returning the same outputs (shapes, dtypes, \
device). forward must compute the result with your own kernels. The file is imported once; compile \
kernels at module level, never inside forward."""

FASTPATH_API = """Build kernels through kernelwright's fast path (a plain {compiler} build, cached; \
well under a second):

```python
from sandbox import fastpath

SRC = r'''
#include <cstdint>
extern "C" void my_kernel(float* out, const float* x, int64_t n) {{ ... }}
'''
_lib = fastpath.compile(SRC, lang="{lang}", flags=[], defines={{"BLOCK": 64}})  # at module level
_lib.my_kernel(out, x, x.numel())  # in forward
```

- Every `extern "C"` function of SRC becomes a method of `_lib`, called with tensors for pointer \
parameters and Python numbers for scalar parameters (int, int64_t, size_t, float, double, bool).
- Tensors must be contiguous, on the kernel's device, and their dtype must match the pointee: \
float* <-> float32, double* <-> float64, int* / int32_t* <-> int32, int64_t* <-> int64, \
uint8_t* <-> uint8 or bool, half* / __half* <-> float16, __nv_bfloat16* <-> bfloat16, void* <-> any.
- Keep extern "C" signatures to those types (no references, structs or templates); put templates \
and helpers behind them.
- `defines` become -D macros; `flags` are extra compiler flags. {build}
- A compile error raises with the compiler log, which you will be shown.
- `torch.utils.cpp_extension.load_inline` works too, but costs about 30 s per build: prefer the fast path."""
BUILD_CPU = "The build is g++ -O3 -march=native -fopenmp -std=c++17 (OpenMP and GCC vector extensions are available)."
BUILD_CUDA = """The build is nvcc -O3 -std=c++17 for this GPU's architecture.
- The extern "C" function is a host launcher for your __global__ kernels. Give it a trailing \
`cudaStream_t stream` parameter and launch on it (`kernel<<<grid, block, smem, stream>>>`); leave it \
out of the call and the fast path fills in torch's current stream.
- Triton kernels (`import triton`, `import triton.language as tl`, `@triton.jit`) are also allowed on this GPU."""

KNOBS = """Optional tuning knobs: declare tunables as module-level constants and list their allowed values, \
e.g. `BLOCK = 128` and `KNOBS = {"BLOCK": [32, 64, 128]}` (optionally \
`KNOB_CONSTRAINTS = ["BLOCK * UNROLL <= 1024"]`), and pass them to the kernel as defines \
(`defines={"BLOCK": BLOCK}`) or Triton constexprs. kernelwright's tuner searches these values, so \
expose the choices you are unsure of instead of guessing one."""

def _import_rule() -> str:
    """The imports rule, worded from the static screen's own allowlist (they cannot disagree)."""
    kernelwright = [f"`from {m.rpartition('.')[0]} import {m.rpartition('.')[2]}` (only "
                    + ", ".join(f"{m.rpartition('.')[2]}.{n}" for n in names) + ")"
                    for m, names in static.ALLOWED_KERNELWRIGHT.items()]
    return (f"Imports: {', '.join([*static.ALLOWED_IMPORTS, *kernelwright])} "
            f"(and {', '.join(static.ALLOWED_GPU_IMPORTS)} on GPUs); nothing else of kernelwright; "
            f"{', '.join(static.PROMPT_BANNED)}, eval and exec are banned.")


# whose code may compute comes first, worded from the policy (evaluator/rules.py prompt_rules)
RULES_COMMON = (
    "Never call, import or subclass the reference: `class ModelNew(nn.Module)`, not `ModelNew(Model)`.",
    "No try/except fallbacks: a kernel that can fail must be fixed, not wrapped.",
    "Keep the task's precision: fp32 stays fp32 end to end (no fp16, bf16 or TF32 inside an fp32 task).",
    "Keep the problem: same sizes, same semantics, the same result (up to rounding) for any input values "
    "(no subsampling, no shortcuts that rely on the input distribution, no constant outputs).",
    "Handle every input shape: read sizes from the tensors at run time, guard tails; no hard-coded sizes "
    "(extra shapes are checked).",
    "Every call does the full computation on its own inputs: no caching of outputs or state across calls, "
    "no behaviour that depends on call count, input pointers or seeds.",
    "Outputs are fresh tensors allocated in forward, with every element written; never an input, "
    "a view of an input, or a buffer kept from an earlier call.",
    "Never modify the inputs (or parameters) in place.",
    "Return plain torch.Tensor outputs, not subclasses or anything evaluated lazily.",
    "Stay inside the buffers you were given: no out-of-bounds reads or writes.",
    "No threads or processes (threading, multiprocessing, subprocess, std::thread, fork); "
    "OpenMP loops inside a C++ kernel are fine.",
    "Do not patch, wrap or replace anything in torch, time or other modules, and do not inspect the "
    "harness (gc, inspect, frames, globals, reading memory you were not given).",
    "No files, environment variables, network, printing of results, or exiting the process.",
    _import_rule(),
)
RULES_CUDA = (
    "All GPU work runs on the current stream and finishes with the call: create no other CUDA streams "
    "and leave nothing running after forward returns.",
    "Do not change device-wide state (persisting-L2 access windows, cudaDeviceSetLimit, cache configs "
    "of other code).",
)

FORMAT = """Answer in this order:
1. Performance analysis: a few sentences on what bounds the reference on this device (memory \
traffic or arithmetic, bytes moved and FLOPs) and what a faster kernel must do.
2. Plan: the kernel design in a few bullets (parallelization, tiling, vectorization, memory access).
3. The complete Python file in one ```python block (kernel source inside it as a string). Nothing after it."""

# the two examples differ in their kernel only: the same file around it
_EXAMPLE_HEAD = '''For a task whose `Model(alpha).forward(x)` returns `x * alpha`:

```python
import torch
import torch.nn as nn

from sandbox import fastpath

'''
_EXAMPLE_MODEL = '''

class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        _lib.scale(out, x, self.alpha, x.numel()){note}
        return out
```'''

EXAMPLE_CPU = _EXAMPLE_HEAD + '''CHUNK = 4096
KNOBS = {"CHUNK": [1024, 4096, 16384]}

SRC = r"""
#include <cstdint>
extern "C" void scale(float* __restrict out, const float* __restrict x, float alpha, int64_t n) {
#pragma omp parallel for simd schedule(static, CHUNK)
    for (int64_t i = 0; i < n; ++i) out[i] = alpha * x[i];
}
"""
_lib = fastpath.compile(SRC, lang="cpp", defines={"CHUNK": CHUNK})
''' + _EXAMPLE_MODEL.replace("{note}", "")

EXAMPLE_CUDA = _EXAMPLE_HEAD + '''BLOCK = 256
KNOBS = {"BLOCK": [128, 256, 512]}

SRC = r"""
#include <cstdint>
#include <cuda_runtime.h>

__global__ void scale_kernel(float* __restrict__ out, const float* __restrict__ x, float alpha, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * BLOCK + threadIdx.x;
    if (i < n) out[i] = alpha * x[i];
}

extern "C" void scale(float* out, const float* x, float alpha, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    scale_kernel<<<(unsigned)((n + BLOCK - 1) / BLOCK), BLOCK, 0, stream>>>(out, x, alpha, n);
}
"""
_lib = fastpath.compile(SRC, lang="cuda", defines={"BLOCK": BLOCK})
''' + _EXAMPLE_MODEL.replace("{note}", "  # the stream is filled in")

ASK_INITIAL = "Write ModelNew for {task_name}: faster than the reference on this device, and exactly as correct."
ASK_CONTRASTIVE = """Above are earlier candidates for this task with the speedups the evaluator measured, \
ordered from slowest to fastest. Analyze why the faster ones are faster (performance analysis), then \
write a plan, then the code of a new kernel faster than all of them."""
INTRO_NEGATIVES = """These candidates were rejected as exploits, not real kernels. Do NOT do what they do:"""
ASK_REPAIR = """Find the cause, explain it in a few sentences, then give the fixed complete file in one \
```python block. Keep what was fast about it; change only what the fix needs."""
WHAT_WENT_WRONG = {
    "compile_error": "It failed to compile. Compiler output (relevant lines):",
    "runtime_error": "It crashed at run time:",
    "timeout": "It did not finish within the time limit: look for an infinite loop, a deadlock (a barrier "
               "in divergent code), a launch with far too little parallelism, or recompiling on every call.",
    "incorrect": "It ran, but its outputs are wrong (compared with the reference on fresh random inputs):",
    "rejected": "The evaluator rejected it for breaking a rule:",
}
RETRY_TRUNCATED = """Your answer was cut off before the code block closed. Reply with only the complete \
file in one ```python block: skip the analysis and keep the code compact."""
RETRY_NO_CODE = """Your last answer had no usable code ({reason}). Reply with the complete file in one \
```python block that defines `class ModelNew(nn.Module)`, with the kernel source inside it."""


# --- the messages ------------------------------------------------------------------------

def initial(task_source: str, target: Target, task_name: str) -> list[dict]:
    parts = [*_frame(task_source, target, task_name), "## Example (a different task)\n" + _example(target),
             "## Answer format\n" + FORMAT, ASK_INITIAL.format(task_name=task_name)]
    return _messages(parts)


def contrastive(task_source: str, target: Target, task_name: str, exemplars: Sequence[Exemplar],
                negatives: Sequence[Exemplar] = (), *, limits: Limits = Limits(),
                baseline: str = BASELINE) -> list[dict]:
    ordered = _slowest_first(exemplars)[-limits.exemplars:] if limits.exemplars > 0 else []
    parts = _frame(task_source, target, task_name)
    shown = [_exemplar(f"Candidate {i}", e, limits, baseline) for i, e in enumerate(ordered, 1)]
    parts.append("## Earlier candidates, slowest first\n\n" + headroom(ordered) + "\n\n".join(shown) if shown
                 else "## Earlier candidates\nNone yet.")
    kept_negatives = list(negatives)[: limits.negatives]
    if kept_negatives:
        bad = [f"### Rejected {i} ({e.candidate_id}): {_cap(e.reason or e.status, limits.reason_chars)}\n"
               + _code(e.source, limits.source_chars) for i, e in enumerate(kept_negatives, 1)]
        parts.append("## What NOT to do\n" + INTRO_NEGATIVES + "\n\n" + "\n\n".join(bad))
    parts += ["## Answer format\n" + FORMAT, ASK_CONTRASTIVE]
    return _messages(parts)


def repair(task_source: str, target: Target, task_name: str, broken: Exemplar, *,
           limits: Limits = Limits()) -> list[dict]:
    parts = _frame(task_source, target, task_name)
    problem = [WHAT_WENT_WRONG.get(broken.status, f"It failed ({broken.status}):")]
    if broken.reason:
        problem.append(_cap(broken.reason, limits.reason_chars))
    if broken.log:
        problem.append("```\n" + relevant_log(broken.log, limits.log_chars) + "\n```")
    if broken.resources:
        problem.append("ptxas: " + _cap(broken.resources, limits.reason_chars))
    parts += [f"## The candidate to repair ({broken.candidate_id})\n" + _code(broken.source, limits.source_chars),
              "## What went wrong\n" + "\n".join(problem), "## Answer format\n" + FORMAT, ASK_REPAIR]
    return _messages(parts)


def format_retry(reason: str) -> str:
    """The follow-up user message (its content) when the last answer had no usable code (`Extracted.reason`)."""
    if reason.startswith("truncated"):
        return RETRY_TRUNCATED
    return RETRY_NO_CODE.format(reason=_cap(reason, 300))


# --- pieces ------------------------------------------------------------------------------

def _messages(parts: list[str]) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def _frame(task_source: str, target: Target, task_name: str) -> list[str]:
    if target.device not in ("cpu", "cuda"):
        raise ValueError(f"unknown target device {target.device!r} (cpu or cuda)")
    device = "the CPU" if target.device == "cpu" else "an NVIDIA GPU"
    facts = "\n".join(f"- {f}" for f in target.facts) or "- (no details given)"
    api = (FASTPATH_API.format(compiler="g++", lang="cpp", build=BUILD_CPU) if target.device == "cpu"
           else FASTPATH_API.format(compiler="nvcc", lang="cuda", build=BUILD_CUDA))
    rules = (*policy_rules.prompt_rules(policy_rules.policy(target.policy)), *RULES_COMMON,
             *(RULES_CUDA if target.device == "cuda" else ()))
    return [
        f"# Task: {task_name}\nWrite a faster implementation of this PyTorch reference for {device}.",
        "## Reference (the task file, verbatim)\n" + _code(task_source, None),
        f"## Target device: {target.device}\n{facts}",
        "## What to write\n" + CONTRACT,
        "## Kernels\n" + api,
        "## Knobs\n" + KNOBS,
        f"## Rules of the {target.policy} policy (a candidate that breaks one is rejected)\n" + "\n".join(f"- {r}" for r in rules),
    ]


def _example(target: Target) -> str:
    return EXAMPLE_CPU if target.device == "cpu" else EXAMPLE_CUDA


def _slowest_first(exemplars: Sequence[Exemplar]) -> list[Exemplar]:
    """Failed ones first (no speedup), then by measured speedup; ties by id, so the order is stable."""
    def key(e: Exemplar) -> tuple:
        measured = e.status == "ok" and e.speedup is not None
        return (measured, e.speedup if measured else 0.0, e.candidate_id)
    return sorted(exemplars, key=key)


def headroom(exemplars: Sequence[Exemplar], baseline: str = BASELINE) -> str:
    """One line on how close to the machine's measured ceilings the reference and the fastest
    candidate are (with a blank line after it), or "" when no verdict says."""
    measured = [e for e in exemplars if e.status == "ok" and e.speedup is not None and e.peak_fraction is not None]
    if not measured:
        return ""
    best = max(measured, key=lambda e: (e.speedup, e.candidate_id))
    eager = (f"{baseline} reaches {best.reference_peak_fraction:.0%} of this machine's measured peak; "
             if best.reference_peak_fraction is not None else "")
    limit = "fp32 FMA throughput" if best.bound == "compute" else "memory bandwidth"
    return (f"Roofline: {eager}the fastest candidate so far ({best.candidate_id}) {best.peak_fraction:.0%}, "
            f"bound by {limit} (100%: the most this machine was measured to sustain).\n\n")


def speedup_text(e: Exemplar, baseline: str = BASELINE) -> str:
    if e.status == "ok" and e.speedup is not None:
        if e.speedup >= 1.0:
            return f"{e.speedup:.2f}x faster than {baseline}"
        return f"{e.speedup:.2f}x the speed of {baseline} ({1 / e.speedup:.2f}x slower)" if e.speedup > 0 \
            else f"no measurable speed against {baseline}"
    return f"{e.status}: {' '.join(e.reason.split()) or 'no reason given'}"


def _exemplar(title: str, e: Exemplar, limits: Limits, baseline: str) -> str:
    head = f"### {title} ({e.candidate_id}): {_cap(speedup_text(e, baseline), limits.reason_chars)}"
    if e.resources:
        head += "\nptxas: " + _cap(e.resources, limits.reason_chars)
    return head + "\n" + _code(e.source, limits.source_chars)


def _code(text: str, limit: int | None) -> str:
    body = text if limit is None else _cap(text, limit)
    fence = "```"
    while fence in body:  # a longer fence, so code containing ``` cannot close the block early
        fence += "`"
    return f"{fence}python\n{body.rstrip()}\n{fence}"


def _cap(text: str, limit: int) -> str:
    """At most about `limit` characters: the head and the tail, with the cut marked."""
    if len(text) <= limit:
        return text
    marker = f"\n... [{len(text) - limit} characters cut] ...\n"
    head = (limit * 2) // 3
    return text[:head] + marker + text[len(text) - (limit - head):]


_LOG_RELEVANT = re.compile(r"error|Error|ERROR|undefined|Traceback|Exception|exception|fatal|ptxas|"
                           r"^\s*\^|: note:|Assertion|Segmentation|abort|File \".*\", line \d+")


def relevant_log(log: str, limit: int) -> str:
    """The lines of a compiler log or traceback that say what went wrong, with a little context."""
    log = log.strip()
    if len(log) <= limit:
        return log
    lines = log.splitlines()
    keep: set[int] = set()
    for i, line in enumerate(lines):
        if _LOG_RELEVANT.search(line):
            keep.update(range(max(0, i - 1), min(len(lines), i + 3)))
    if not keep:  # nothing recognisable: the end of the log is where failures usually are
        return _cap(log, limit)
    picked, last = [], -2
    for i in sorted(keep):
        if i != last + 1:
            picked.append("...")
        picked.append(lines[i])
        last = i
    if last != len(lines) - 1:
        picked.append("...")
    text = "\n".join(picked)
    if len(text) <= limit:
        return text
    cut = f"... [{len(text) - limit} more characters cut]"
    if "Traceback" in log:  # a traceback ends with the frame and the exception that matter
        return cut + "\n" + text[len(text) - limit + 40:].split("\n", 1)[-1]
    # the first errors matter most in a compiler log
    return text[: limit - 40].rsplit("\n", 1)[0] + "\n" + cut
