"""`kernelwright e2e`: the cpu suite's exported kernels applied to a small transformer, eagerly and
under torch.compile, against the untouched model."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the package registers every command
from tests.agent.e2e_data import PACKAGE, exported_package, loaded_package

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def package(sandbox, tmp_path_factory) -> Path:
    loaded_package(sandbox, tmp_path_factory)  # imported here, its builds in a temporary cache
    return exported_package(sandbox, tmp_path_factory)


@pytest.fixture(scope="module")
def report(package: Path) -> dict:
    result = CliRunner().invoke(app, ["e2e", "--package", str(package), "--size", "tiny", "--repeats", "3", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_layer_with_a_kernel_is_replaced_and_runs_it(report: dict):
    assert sorted((r["path"], r["task"]) for r in report["replaced"]) == [
        ("", "softmax"), ("blocks.0.attn", "causal_attention"), ("blocks.0.mlp.0", "gelu_linear"),
        ("blocks.0.norm1", "layernorm"), ("blocks.0.norm2", "layernorm"), ("norm", "layernorm")]
    assert report["skipped"] == [] and report["reasons"] == {}
    for run in ("eager", "compiled"):
        assert report["runs"][run]["calls"] == {"layernorm": {"kernel": 3, "reference": 0},
                                                "gelu_linear": {"kernel": 1, "reference": 0},
                                                "causal_attention": {"kernel": 1, "reference": 0},
                                                "softmax": {"kernel": 1, "reference": 0}}


def test_outputs_agree_with_the_untouched_model_eagerly_and_compiled(report: dict):
    assert report["tolerance"] == {"atol": 1e-4, "rtol": 1e-4} and report["parity_ok"]
    for run in ("eager", "compiled"):
        parity = report["runs"][run]["parity"]
        assert sorted(parity) == ["hidden", "logits", "probs"]
        for out in parity.values():
            assert out["within"] and 0 <= out["max_abs"] < 1e-4
    assert all(o["within"] for o in report["runs"]["compiled"]["base_parity"].values())


def test_speed_is_measured_for_both_models(report: dict):
    for run in report["runs"].values():
        t = run["timing"]
        assert t["base"]["median_ms"] > 0 and t["applied"]["median_ms"] > 0
        assert math.isclose(run["speedup"], t["base"]["median_ms"] / t["applied"]["median_ms"])
    assert report["runs"]["compiled"]["compile_s"] > 0


def test_rmsnorm_models_get_the_rmsnorm_kernel(package: Path):
    result = CliRunner().invoke(app, ["e2e", "--package", str(package), "--size", "tiny", "--norm", "rmsnorm",
                                      "--no-compile", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert sorted(x["path"] for x in r["replaced"] if x["task"] == "rmsnorm") == ["blocks.0.norm1", "blocks.0.norm2",
                                                                                 "norm"]
    assert r["parity_ok"] and list(r["runs"]) == ["eager"]


def test_a_kernel_that_is_wrong_in_the_model_fails_parity_and_exits_1(package: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(package, broken)
    kernel = broken / PACKAGE / "kernels" / "softmax.py"
    kernel.write_text(kernel.read_text().replace("        return out\n", "        return out * 1.5\n"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), f"{PACKAGE.upper()}_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "agent.cli", "e2e", "--package", str(broken), "--size", "tiny",
                        "--no-compile", "--repeats", "1", "--json"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    parity = json.loads(r.stdout)["runs"]["eager"]["parity"]
    assert not parity["probs"]["within"] and parity["logits"]["within"]


@pytest.mark.parametrize("args, message", [
    (["--package", "{tmp}/missing"], "is not a directory"),
    (["--package", "{tmp}"], "is not an exported kernel package (no <name>/manifest.json beside an __init__.py)"),
    (["--package", "{pkg}", "--norm", "groupnorm"], "Error: norm 'groupnorm': use layernorm or rmsnorm"),
    (["--package", "{pkg}", "--size", "huge"], "Error: unknown --size 'huge' (use small or tiny)"),
    (["--package", "{pkg}", "--config", "{tmp}/bad.json"], "Error: unknown model config keys: width"),
])
def test_bad_input_is_one_line_and_exits_2(package: Path, tmp_path: Path, args: list[str], message: str):
    (tmp_path / "bad.json").write_text('{"width": 3}')
    args = [a.format(tmp=tmp_path, pkg=package) for a in args]
    result = CliRunner().invoke(app, ["e2e", *args])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
