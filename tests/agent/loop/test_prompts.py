"""Prompts: what each ask contains, in what order, and that it stays bounded."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from agent.loop import prompts
from agent.loop.parse import extract
from agent.loop.prompts import Exemplar, Limits, Target, contrastive, format_retry, initial, relevant_log, repair
from evaluator.static import screen
from tasks.spec import load_task

TASK = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)


def get_inputs():
    return [torch.randn(4096, 1024)]


def get_init_inputs():
    return []
'''
CPU = Target("cpu", ("AMD EPYC 7B13, 2 cores, AVX2", "g++ 12, OpenMP"))
GPU = Target("cuda", ("NVIDIA H100, sm_90, 132 SMs, 80 GB HBM3",))


def user(messages: list[dict]) -> str:
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[1]["content"]


def kernel(tag: str) -> str:
    return f"import torch\n# {tag}\nclass ModelNew(torch.nn.Module):\n    pass\n"


# --- initial -------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [CPU, GPU], ids=["cpu", "cuda"])
def test_initial_has_task_facts_api_rules_and_format(target):
    text = user(initial(TASK, target, "relu"))
    assert TASK.rstrip() in text  # verbatim
    assert "relu" in text.splitlines()[0]
    for fact in target.facts:
        assert fact in text
    assert "class ModelNew(nn.Module)" in text
    assert "from sandbox import fastpath" in text and "fastpath.compile(" in text
    assert "float* <-> float32" in text and "load_inline" in text
    assert ("cudaStream_t stream" in text) == (target.device == "cuda")
    assert f'lang="{"cpp" if target.device == "cpu" else "cuda"}"' in text
    assert 'KNOBS = {"BLOCK": [32, 64, 128]}' in text
    for rule in prompts.RULES_COMMON:
        assert rule in text
    assert "Performance analysis" in text and "Plan" in text and "```python block" in text


def test_rules_cover_the_exploit_classes():
    cpu, gpu = user(initial(TASK, CPU, "relu")), user(initial(TASK, GPU, "relu"))
    for phrase in ["PyTorch ops", "subclass the reference", "try/except", "cuBLAS", "fp32 stays fp32",
                   "no caching of outputs", "Never modify the inputs", "hard-coded sizes", "fresh tensors",
                   "No threads or processes", "patch", "inspect the harness", "out-of-bounds", "never launched",
                   "lazily", "exiting the process", "distribution"]:
        assert phrase in cpu and phrase in gpu, phrase
    assert "other CUDA streams" in gpu and "other CUDA streams" not in cpu
    assert "persisting-L2" in gpu


def test_initial_example_matches_the_device():
    cpu, gpu = user(initial(TASK, CPU, "relu")), user(initial(TASK, GPU, "relu"))
    assert prompts.EXAMPLE_CPU in cpu and 'lang="cuda"' not in cpu and "@triton.jit" not in cpu
    assert prompts.EXAMPLE_CUDA in gpu and "<<<" in gpu and "Triton" in gpu


def test_prompts_are_deterministic():
    ex = [Exemplar("a", kernel("a"), "ok", 1.5), Exemplar("b", kernel("b"), "ok", 1.5)]
    assert initial(TASK, GPU, "relu") == initial(TASK, GPU, "relu")
    assert contrastive(TASK, CPU, "relu", ex) == contrastive(TASK, CPU, "relu", list(reversed(ex)))


def test_unknown_device_is_refused():
    with pytest.raises(ValueError):
        initial(TASK, Target("tpu"), "relu")


@pytest.mark.parametrize("example", [prompts.EXAMPLE_CPU, prompts.EXAMPLE_CUDA], ids=["cpu", "cuda"])
def test_worked_examples_pass_the_static_screen(example):
    e = extract(example)
    assert e.ok and screen(e.source) == []


SCALE_TASK = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return x * self.alpha


def get_inputs():
    return [torch.randn(256, 1000)]


def get_init_inputs():
    return [1.5]
'''


def test_cpu_example_is_an_ok_candidate(evaluator, tmp_path: Path):
    (tmp_path / "scale.py").write_text(SCALE_TASK)
    v = evaluator.evaluate(load_task(tmp_path / "scale.py"), extract(prompts.EXAMPLE_CPU).source)
    assert v.status.value == "ok", v.reason


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_example_is_an_ok_candidate(cache_dir, tmp_path: Path):
    from evaluator.cascade import EvalConfig, Evaluator
    from sandbox.process import ProcessSandbox, SandboxConfig
    from tests.conftest import FAST_TIMING

    (tmp_path / "scale.py").write_text(SCALE_TASK)
    with ProcessSandbox(SandboxConfig(cache_dir=cache_dir, root=tmp_path / "sb", device="cuda")) as sb:
        ev = Evaluator(sb, EvalConfig(device="cuda", timeout_s=240, timing=FAST_TIMING))
        try:
            v = ev.evaluate(load_task(tmp_path / "scale.py"), extract(prompts.EXAMPLE_CUDA).source)
        finally:
            ev.close()
    assert v.status.value == "ok", (v.reason, v.log[-2000:])


# --- contrastive ---------------------------------------------------------------------------

def test_contrastive_shows_each_exemplar_slowest_first():
    exemplars = [
        Exemplar("fast", kernel("FAST"), "ok", 2.5, resources="ptxas: Used 40 registers, 8192 bytes smem"),
        Exemplar("wrong", kernel("WRONG"), "incorrect", None,
                 reason="default/none: output 0: max abs error 0.3 (worst at flat index 12: got 1.2, want 0.9)"),
        Exemplar("slow", kernel("SLOW"), "ok", 0.5),
        Exemplar("mid", kernel("MID"), "ok", 1.83),
    ]
    text = user(contrastive(TASK, GPU, "relu", exemplars))
    assert TASK.rstrip() in text
    assert "2.50x faster than PyTorch eager" in text and "1.83x faster than PyTorch eager" in text
    assert "0.50x the speed of PyTorch eager (2.00x slower)" in text
    assert "incorrect: default/none: output 0: max abs error 0.3" in text
    assert "Used 40 registers" in text
    positions = [text.index(f"# {tag}\n") for tag in ("WRONG", "SLOW", "MID", "FAST")]
    assert positions == sorted(positions)
    assert "faster than all of them" in text and "performance analysis" in text


def test_contrastive_states_the_headroom_to_the_ceilings():
    exemplars = [Exemplar("fast", kernel("FAST"), "ok", 2.5, peak_fraction=0.31, bound="memory",
                          reference_peak_fraction=0.12),
                 Exemplar("slow", kernel("SLOW"), "ok", 0.5, peak_fraction=0.06, bound="memory",
                          reference_peak_fraction=0.13)]
    text = user(contrastive(TASK, CPU, "relu", exemplars))
    line = next(ln for ln in text.splitlines() if ln.startswith("Roofline:"))
    assert "PyTorch eager reaches 12%" in line and "(fast) 31%" in line and "memory bandwidth" in line
    assert text.index(line) < text.index("# SLOW\n")  # before the exemplars it sums up
    compute = [Exemplar("mm", kernel("MM"), "ok", 1.2, peak_fraction=0.5, bound="compute", reference_peak_fraction=0.4)]
    assert "fp32 FMA throughput" in user(contrastive(TASK, CPU, "relu", compute))
    # measured without ceilings: nothing to say
    assert "Roofline:" not in user(contrastive(TASK, CPU, "relu", [Exemplar("a", kernel("A"), "ok", 1.1)]))


def test_contrastive_shows_negatives_as_what_not_to_do():
    negatives = [Exemplar("cheat1", kernel("CHEAT1"), "rejected", None,
                          reason="pytorch_compute: forward ran PyTorch ops instead of its own kernel (aten::relu)"),
                 Exemplar("cheat2", kernel("CHEAT2"), "rejected", None,
                          reason="background_thread: forward left a Python thread running")]
    text = user(contrastive(TASK, CPU, "relu", [Exemplar("a", kernel("A"), "ok", 1.1)], negatives))
    assert "NOT" in text
    for n in negatives:
        assert n.reason in text and n.source.strip() in text
    assert text.index("# A\n") < text.index("What NOT to do")


def test_contrastive_keeps_the_fastest_when_there_are_too_many():
    exemplars = [Exemplar(f"c{i:02d}", kernel(f"K{i:02d}"), "ok", 1.0 + i / 10) for i in range(12)]
    text = user(contrastive(TASK, CPU, "relu", exemplars, limits=Limits(exemplars=3)))
    assert [f"K{i:02d}" in text for i in range(12)] == [False] * 9 + [True] * 3


def test_contrastive_caps_long_sources():
    huge = kernel("HUGE") + "# filler\n" * 20_000
    text = user(contrastive(TASK, CPU, "relu", [Exemplar("h", huge, "ok", 1.2)] * 2,
                            [Exemplar("n", huge, "rejected", None, reason="x" * 50_000)]))
    assert "characters cut" in text
    assert len(text) < len(user(initial(TASK, CPU, "relu"))) + 3 * 8000 + 3 * 1000 + 3000


def test_fence_inside_an_exemplar_cannot_close_its_block():
    source = kernel("F") + 'DOC = """\n```\n"""\n'
    text = user(contrastive(TASK, CPU, "relu", [Exemplar("f", source, "ok", 1.2)]))
    assert "````python\n" + source.rstrip() + "\n````" in text


# --- repair --------------------------------------------------------------------------------

COMPILE_LOG = "\n".join(
    [f"/tmp/build/k.cu(1{i}): warning #177-D: variable \"t{i}\" was declared but never referenced" for i in range(5)]
    + ["In file included from k.cu:2:", "k.cu(42): error: identifier \"BLOCKK\" is undefined",
       "      int i = blockIdx.x * BLOCKK + threadIdx.x;", "                           ^"]
    + [f"noise line {i} " + "." * 60 for i in range(400)]
    + ["1 error detected in the compilation of \"k.cu\"."])


def test_repair_shows_the_relevant_compiler_lines():
    broken = Exemplar("c7", kernel("BROKEN"), "compile_error", None, reason="nvcc failed", log=COMPILE_LOG)
    text = user(repair(TASK, GPU, "relu", broken))
    assert "# BROKEN\n" in text and TASK.rstrip() in text
    assert "failed to compile" in text
    assert 'identifier "BLOCKK" is undefined' in text and "blockIdx.x * BLOCKK" in text
    assert "1 error detected" in text
    assert "noise line 200" not in text
    assert "fixed complete file" in text


def test_repair_shows_the_correctness_diff():
    reason = "default/none: output 0: max abs error 0.3 (worst at flat index 12: got 1.2, want 0.9)"
    text = user(repair(TASK, CPU, "relu", Exemplar("c8", kernel("WRONG"), "incorrect", None, reason=reason)))
    assert reason in text and "outputs are wrong" in text


def test_repair_of_a_timeout_names_likely_causes():
    text = user(repair(TASK, CPU, "relu", Exemplar("c9", kernel("HANG"), "timeout", None, reason="no result in 60 s")))
    assert "time limit" in text and "no result in 60 s" in text


def test_repair_caps_the_log_and_source():
    log = "\n".join(f"k.cpp:{i}:5: error: expected ';' before '}}' token" for i in range(5000))
    broken = Exemplar("c10", kernel("BIG") + "# x\n" * 10_000, "compile_error", None, log=log)
    text = user(repair(TASK, CPU, "relu", broken, limits=Limits(source_chars=2000, log_chars=1500)))
    assert "k.cpp:0:5: error" in text and "more characters cut" in text
    assert len(text) < len(user(initial(TASK, CPU, "relu"))) + 2000 + 1500 + 1500


def test_relevant_log_keeps_a_traceback_tail():
    log = "Traceback (most recent call last):\n" + "".join(
        f'  File "x.py", line {i}, in f{i}\n    f{i + 1}()\n' for i in range(300)) + "RuntimeError: CUDA error: misaligned address"
    trimmed = relevant_log(log, 800)
    assert len(trimmed) <= 850 and trimmed.endswith("RuntimeError: CUDA error: misaligned address")


def test_short_logs_are_kept_whole():
    assert relevant_log("a\nb\nc", 100) == "a\nb\nc"


# --- format retry --------------------------------------------------------------------------

def test_format_retry_messages():
    assert "cut off" in format_retry("truncated: unclosed code fence")
    other = format_retry("no class ModelNew in the code")
    assert "no class ModelNew in the code" in other and "```python" in other


def test_the_imports_rule_is_the_static_screens_allowlist():
    from evaluator import static

    rule = next(r for r in prompts.RULES_COMMON if r.startswith("Imports:"))
    allowed, banned = rule.removeprefix("Imports:").split(";", 1)
    assert {f"{p}.{m}" for p, m in re.findall(r"`from ([\w.]+) import (\w+)`", allowed)} == set(static.ALLOWED_KERNELWRIGHT)
    named = set(re.findall(r"\bfastpath\.(\w+)", allowed))
    assert named == set(static.ALLOWED_KERNELWRIGHT["sandbox.fastpath"])
    plain = set(re.findall(r"\b[a-z][a-z_]*\b", re.sub(r"`[^`]*`|\(only [^)]*\)", "", allowed))) - {"and", "on"}
    assert plain == {*static.ALLOWED_IMPORTS, *static.ALLOWED_GPU_IMPORTS}
    assert screen("".join(f"import {m}\n" for m in plain) + "from sandbox import fastpath\n") == []
    refused = set(re.findall(r"\b[a-z]+\b", banned)) - {"nothing", "else", "of", "kernelwright", "and", "are",
                                                          "banned", "eval", "exec"}
    assert refused == set(static.PROMPT_BANNED)
    for module in refused:
        assert {f.rule for f in screen(f"import {module}\n")} == {"banned_import"}, module
    for call in ("eval", "exec"):
        assert {f.rule for f in screen(f"{call}('1')\n")} == {"banned_call"}
