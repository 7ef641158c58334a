"""KernelBench as a suite (tasks/kernelbench.py): both layouts of a checkout, selection, size
scaling recorded with the task, derived shape variants that the task accepts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agent.cli import app
from tasks.kernelbench import KernelBenchSelection, layout, load_suite, scaled, size_constants
from tasks.registry import resolve
from tasks.spec import TaskError, apply_variant

DATA = Path(__file__).resolve().parent.parent / "data"
CURRENT, V0 = DATA / "kernelbench_current", DATA / "kernelbench_v0"


def test_both_layouts_are_found_and_name_tasks_alike(tmp_path):
    assert layout(CURRENT)[0] == "current" and layout(CURRENT / "KernelBench")[0] == "current"
    assert layout(V0)[0] == "v0"
    new = {t.name: t.source for t in load_suite(KernelBenchSelection(CURRENT, (1,)), tmp_path)}
    old = {t.name: t.source for t in load_suite(KernelBenchSelection(V0, (1,)), tmp_path)}
    assert set(old) == {"kb_l1_19_relu", "kb_l1_23_softmax"} and set(old) < set(new)
    assert all(new[n] == old[n] for n in old)  # the same problem file is the same task


def test_selection_by_level_and_id(tmp_path):
    assert [t.name for t in load_suite(KernelBenchSelection(CURRENT, (2,)), tmp_path)] == ["kb_l2_12_gemm_multiply_leakyrelu"]
    picked = load_suite(KernelBenchSelection(CURRENT, (1,), (23, 1)), tmp_path)
    assert [t.name for t in picked] == ["kb_l1_1_square_matrix_multiplication", "kb_l1_23_softmax"]
    assert all(t.meta.suite == "kernelbench" for t in picked)


@pytest.mark.parametrize("sel, message", [
    (KernelBenchSelection(DATA), "not a KernelBench checkout"),
    (KernelBenchSelection(CURRENT, (1,), (999,)), "no task ids 999"),
    (KernelBenchSelection(CURRENT, (3,)), "no level 3"),
    (KernelBenchSelection(CURRENT, (1,), (), 0.0), "--scale 0"),
])
def test_bad_selections_are_one_line_task_errors(sel, message, tmp_path):
    with pytest.raises(TaskError, match=message) as e:
        load_suite(sel, tmp_path)
    assert "\n" not in str(e.value)


def test_resolve_needs_a_checkout_for_kernelbench(tmp_path):
    with pytest.raises(TaskError, match="needs --kernelbench"):
        resolve("kernelbench", None)
    assert len(resolve("kernelbench", None, KernelBenchSelection(V0), tmp_path)) == 2


def test_scaling_shrinks_sizes_keeps_structure_and_is_recorded(tmp_path):
    src = "N = 2048\nkernel_size = 3\nstride = 32\nbatch_size = 16\ndim = 1\neps = 1e-5\nflag = True\n"
    out, changed = scaled(src, 0.25)
    assert changed == {"N": (2048, 512)}
    assert "N = 512" in out and "stride = 32" in out and "batch_size = 16" in out
    (task,) = load_suite(KernelBenchSelection(CURRENT, (1,), (1,), 0.125), tmp_path)
    assert task.meta.scale == 0.125 and "scaled by 0.125" in task.meta.description
    assert task.source.startswith("# kernelwright: KernelBench level 1 problem 1, scaled by 0.125 (N 2048->256)")
    module = task.load_module()
    assert module.N == 256 and [tuple(x.shape) for x in module.get_inputs()] == [(256, 256), (256, 256)]
    (full,) = load_suite(KernelBenchSelection(CURRENT, (1,), (1,)), tmp_path)
    assert full.meta.scale == 1.0 and full.source_hash != task.source_hash
    assert full.source == (CURRENT / "KernelBench/level1/1_Square_matrix_multiplication_.py").read_text()


def test_derived_variants_differ_and_the_task_runs_them(tmp_path):
    tasks = load_suite(KernelBenchSelection(CURRENT, (), (), 0.125), tmp_path)
    for task in tasks:
        module = task.load_module()
        default = size_constants(task.source)
        assert len(task.meta.variants) == 2, task.name
        shapes = [[tuple(x.shape) for x in module.get_inputs()]]
        for v in task.meta.variants:
            assert v != default and set(v) <= set(default)
            old = apply_variant(module, v)
            try:
                shapes.append([tuple(x.shape) for x in module.get_inputs()])
                torch.manual_seed(0)
                with torch.no_grad():
                    out = module.Model(*module.get_init_inputs())(*module.get_inputs())
                assert torch.isfinite(out).all()
            finally:
                apply_variant(module, old)
        assert len(set(map(tuple, shapes))) == 3, (task.name, shapes)  # three different shapes
        assert any(d % 2 for v in task.meta.variants for d in v.values())  # an odd size among them


def test_tasks_list_shows_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELWRIGHT_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["tasks", "list", "--suite", "kernelbench", "--kernelbench", str(CURRENT),
                                 "--level", "1", "--scale", "0.25", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["tasks"]
    assert len(rows) == 4 and all(row["scale"] == 0.25 and row["variants"] == 2 for row in rows)
    r = CliRunner().invoke(app, ["tasks", "list", "--suite", "kernelbench", "--kernelbench", str(tmp_path)])
    assert r.exit_code == 2 and "not a KernelBench checkout" in r.output
