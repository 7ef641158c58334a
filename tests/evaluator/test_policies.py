"""Policies: whose code may compute (evaluator/rules.py). A partial replacement (PyTorch's matmul,
the candidate's own C++ epilogue) is rejected under strict and ok under kernelbench, with the
PyTorch ops it ran and its coverage recorded; every other check holds under every policy."""
from __future__ import annotations

from pathlib import Path

import pytest

from agent.loop import prompts
from agent.loop.reward import reward
from evaluator.cascade import EvalConfig, Evaluator
from evaluator.rules import POLICIES, lazy, policy, prompt_rules, screened
from evaluator.static import screen
from tasks.spec import load_task
from tests.conftest import FAST_TIMING

TASK = Path(__file__).resolve().parent.parent / "data" / "gemm_relu_small.py"

DATA = TASK.parent
# PyTorch's matmul, the candidate's ReLU: KernelBench's partial replacement (README's examples too)
PARTIAL = (DATA / "gemm_relu_partial.py").read_text()
OWN = (DATA / "gemm_relu_own.py").read_text()
HEAD = PARTIAL[: PARTIAL.index("    def forward(self, x):\n") + len("    def forward(self, x):\n")]
PYTORCH_ONLY = HEAD + '''        return torch.relu(torch.matmul(x, self.weight))
'''
# computes correctly, then hands back the input's storage: an exploit under every policy
ALIASED = HEAD + '''        y = torch.relu(torch.matmul(x, self.weight))
        _lib.relu(y, y, y.numel())
        return x.view(-1)[: y.numel()].view_as(y).copy_(y) if x.shape == y.shape else y.as_strided(y.shape, y.stride())
'''


@pytest.fixture(scope="module")
def task():
    return load_task(TASK)


@pytest.fixture(scope="module")
def evaluators(sandbox):
    evs = {name: Evaluator(sandbox, EvalConfig(timeout_s=60, timing=FAST_TIMING, policy=p)) for name, p in POLICIES.items()}
    yield evs
    for ev in evs.values():
        ev.close()


def test_partial_replacement_is_rejected_under_strict(evaluators, task):
    v = evaluators["strict"].evaluate(task, PARTIAL)
    assert v.status.value == "rejected" and v.reason.startswith("pytorch_compute"), v.reason
    assert v.policy == "strict"


def test_partial_replacement_is_ok_under_kernelbench_with_its_torch_ops_and_coverage(evaluators, task):
    v = evaluators["kernelbench"].evaluate(task, PARTIAL)
    assert v.status.value == "ok", v.reason
    assert v.policy == "kernelbench" and v.to_json()["policy"] == "kernelbench"
    assert any(op in v.torch_ops for op in ("aten::mm", "aten::matmul")), v.torch_ops
    if v.coverage is None or v.coverage.share is None:
        pytest.skip("no coverage on this machine (perf sampling refused)")
    # the matmul is nearly all the work: the candidate's ReLU carries a sliver of it
    assert v.coverage.share < 0.5
    flagged = [f for f in v.flags if f.startswith("lazy_optimization")]
    assert flagged, v.flags
    r = reward({**v.to_json(), "speedup": 2.0})  # were it faster: the speed would be PyTorch's, not rewarded
    assert r.value == 0.0 and "lazy optimization" in r.note
    assert reward({**v.to_json(), "speedup": 2.0, "flags": []}).value > 0


def test_own_kernel_is_not_lazy_and_runs_no_torch_ops(evaluators, task):
    v = evaluators["kernelbench"].evaluate(task, OWN)
    assert v.status.value == "ok", v.reason
    assert v.torch_ops == ()
    assert not any(f.startswith("lazy_optimization") for f in v.flags), v.flags


def test_kernelbench_needs_a_custom_kernel_library_does_not(evaluators, task):
    v = evaluators["kernelbench"].evaluate(task, PYTORCH_ONLY)
    assert v.status.value == "rejected" and v.reason.startswith("ghost_kernel"), v.reason
    v = evaluators["library"].evaluate(task, PYTORCH_ONLY)
    assert v.status.value == "ok", v.reason
    assert v.policy == "library" and ("aten::mm" in v.torch_ops or "aten::matmul" in v.torch_ops)


def test_exploit_checks_hold_under_every_policy(evaluators, task):
    for name in POLICIES:
        v = evaluators[name].evaluate(task, ALIASED)
        assert v.status.value in ("rejected", "incorrect"), (name, v.status, v.reason)
        assert v.status.value != "ok"


def test_static_screen_is_the_same_but_for_vendor_calls():
    src = 'SRC = r"""#include <cblas.h>\nextern "C" void f() { cblas_sgemm(0); }"""\nimport subprocess\n'
    found = screen(src)
    rules_of = {name: {f.rule for f in screened(found, p)} for name, p in POLICIES.items()}
    assert "vendor_library" in rules_of["strict"] and "vendor_library" in rules_of["kernelbench"]
    assert "vendor_library" not in rules_of["library"]
    assert all("banned_import" in r for r in rules_of.values())  # subprocess: banned everywhere


def test_lazy_flag_threshold():
    kb = policy("kernelbench")
    assert lazy(0.02, kb) and lazy(0.5, kb) is None and lazy(None, kb) is None
    assert lazy(0.0, policy("strict")) is None  # strict rejects low coverage instead


def test_unknown_policy_is_one_line():
    with pytest.raises(ValueError, match="unknown policy 'loose'"):
        policy("loose")


@pytest.mark.parametrize("name", list(POLICIES))
def test_prompt_states_the_policy_rules(name):
    text = prompts.initial("class Model: ...", prompts.Target("cpu", policy=name), "t")[1]["content"]
    assert f"Rules of the {name} policy" in text
    for rule in prompt_rules(POLICIES[name]):
        assert rule in text
    assert ("forward runs only your kernels" in text) == (name == "strict")
    assert ("Vendor libraries (cuBLAS" in text) == (name == "library")
