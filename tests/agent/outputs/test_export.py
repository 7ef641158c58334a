"""`kernelwright export`: a package that stands alone, installed and run outside kernelwright."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.typer_app import app
from agent.outputs import export_select
from agent.outputs.export import ExportError, rewrite_imports, runtime_source
from store import Store
from tasks.spec import load_task
from tests.data.candidates import slow

ROOT = Path(__file__).resolve().parents[3]
OURS = {"agent", "sandbox", "evaluator", "tasks", "store"}

# Run inside the exported package's environment; prints what it saw as JSON.
PROBE = textwrap.dedent("""
    import json, os, sys
    import torch
    import kwk
    from kwk import _dispatch
    seen = {}
    seen["after_import"] = sorted({m.split(".")[0] for m in sys.modules} & %r)
    torch.manual_seed(0)
    x = torch.randn(64, 300)
    want = torch.softmax(x, dim=1)
    y = kwk.softmax(x)
    seen["kernel"] = [kwk.last_path("softmax"), bool(torch.allclose(y, want, atol=1e-5))]
    y = kwk.softmax(x.double())
    seen["float64"] = [kwk.last_path("softmax"), kwk.last_reason("softmax"), str(y.dtype),
                       bool(torch.allclose(y, torch.softmax(x.double(), dim=1)))]
    y = kwk.softmax(x.t())
    seen["transposed"] = [kwk.last_path("softmax"), bool(torch.allclose(y, torch.softmax(x.t(), dim=1)))]
    entry = _dispatch.entry("rmsnorm")
    x = torch.randn(16, 4096)
    seen["rmsnorm"] = [bool(torch.allclose(kwk.rmsnorm(x), _dispatch.build(entry, kernel=False)(x), atol=1e-4)),
                       kwk.last_path("rmsnorm")]
    os.environ["KWK_FORCE_REFERENCE"] = "1"
    kwk.softmax(torch.randn(4, 8))
    seen["forced"] = kwk.last_path("softmax")
    seen["after_calls"] = sorted({m.split(".")[0] for m in sys.modules} & %r)
    print(json.dumps(seen))
""") % (OURS, OURS)


# A torch.compile(fullgraph=True) function calling the package's op: a graph break would raise.
COMPILED = textwrap.dedent("""
    import json
    import torch
    import kwk
    f = torch.compile(lambda x: torch.ops.kwk.softmax(x) + 1, fullgraph=True)
    x = torch.randn(64, 300)
    with torch.no_grad():
        y = f(x)
    print(json.dumps([bool(torch.allclose(y, torch.softmax(x, dim=1) + 1, atol=1e-5)), kwk.last_path("softmax")]))
""")


@pytest.fixture(scope="module")
def exported(db: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "kwk-project"
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--name", "kwk", "--min-speedup", "0",
                                      "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return out


def test_the_manifest_names_the_best_kernel_of_every_task(db: Path, exported: Path):
    manifest = json.loads((exported / "kwk" / "manifest.json").read_text())
    with Store.open(str(db), db) as store:
        best = {r["task"]: r for r in store.best()}
        for e in manifest["tasks"]:
            row = best[e["task"]]
            assert (e["speedup"], e["candidate_id"], e["evaluation_id"], e["fingerprint_id"]) == (
                row["speedup"], row["candidate_id"], row["evaluation_id"], row["fingerprint_id"])
            source = store.candidate(e["candidate_id"])["source"]
            assert e["source_hash"] == hashlib.sha256(source.encode()).hexdigest()
            assert e["fingerprint"]["id"] == e["fingerprint_id"] and e["device"] == "cpu"
            assert 0 < e["peak_fraction"] <= 1 and (e["peak_fraction"], e["bound"]) == (row["peak_fraction"], row["bound"])
            assert e["inputs"] == [{"name": "x", "kind": "tensor", "dtype": "float32", "ndim": 2, "device": "cpu",
                                    "pinned": False}]
            assert e["op"]["schema"] == ("(Tensor x, Tensor weight) -> Tensor" if e["task"] == "rmsnorm"
                                         else "(Tensor x) -> Tensor")
            assert e["spread"]["candidate"] > 0 and e["spread"]["needed"] > 1
            kernel = (exported / "kwk" / "kernels" / f"{e['module']}.py").read_text()
            assert kernel == source.replace("from sandbox import fastpath", "from .. import _runtime as fastpath")
    assert sorted(e["task"] for e in manifest["tasks"]) == sorted(best) and manifest["left_out"] == []
    init = (exported / "kwk" / "__init__.py").read_text()
    assert "def softmax(x: torch.Tensor) -> torch.Tensor:" in init  # the reference's forward signature
    assert "def rmsnorm(x: torch.Tensor) -> torch.Tensor:" in init and "def softmax_small(x):" in init


def test_the_package_runs_without_kernelwright_and_falls_back_honestly(exported: Path, tmp_path: Path):
    """With kernelwright importable (the repo on the path), the package still imports none of it."""
    cache, ours = tmp_path / "kwk-cache", tmp_path / "kernelwright-cache"
    env = {**os.environ, "PYTHONPATH": f"{exported}{os.pathsep}{ROOT}", "KWK_CACHE": str(cache),
           "KERNELWRIGHT_CACHE": str(ours)}
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["after_import"] == [] and seen["after_calls"] == []
    assert seen["kernel"] == ["kernel", True]
    assert seen["float64"] == ["reference", "x has dtype float64, the kernel takes float32", "torch.float64",
                               True]
    assert seen["transposed"] == ["reference", True]
    assert seen["rmsnorm"] == [True, "kernel"] and seen["forced"] == "reference"
    assert list(cache.rglob("lib.so")) and not ours.exists()  # its own compile cache, never kernelwright's


def test_selftest_fails_when_a_kernel_is_wrong(exported: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    kernel = broken / "kwk" / "kernels" / "softmax.py"
    kernel.write_text(kernel.read_text().replace("        return out\n", "        return out * 1.5\n"))
    env = {**os.environ, "PYTHONPATH": str(broken), "KWK_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "kwk.selftest"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = {ln.split(":")[0]: ln for ln in r.stdout.splitlines()}
    assert lines["FAIL  softmax"].startswith("FAIL  softmax: output 0 is off by up to")
    assert lines["ok    rmsnorm"] == "ok    rmsnorm: matches the reference on 3 shapes (built here)"


@pytest.mark.slow
def test_pip_install_into_a_fresh_environment_and_selftest(exported: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["KWK_CACHE"] = str(tmp_path / "cache")
    for what in (["torch==2.13.0"], [str(exported)]):  # torch first: the CPU wheel on this machine
        r = subprocess.run([py, "-m", "pip", "install", "-q", *what], env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    away = tmp_path / "elsewhere"
    away.mkdir()
    r = subprocess.run([py, "-m", "kwk.selftest"], cwd=away, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert sorted(r.stdout.split()[i + 1].rstrip(":") for i, w in enumerate(r.stdout.split()) if w == "ok") == [
        "rmsnorm", "softmax", "softmax_small"]
    r = subprocess.run([py, "-c", PROBE], cwd=away, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["kernel"] == ["kernel", True] and seen["float64"][0] == "reference" and seen["float64"][3]
    r = subprocess.run([py, "-c", COMPILED], cwd=away, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [True, "kernel"]
    r = subprocess.run([py, "-m", "pip", "list", "--format=json"], env=env, capture_output=True, text=True, timeout=300)
    assert "kernelwright" not in {p["name"] for p in json.loads(r.stdout)}


def test_imports_of_the_fast_path_are_rewritten_and_others_refused():
    body = "\nimport torch\n_lib = None\n"
    assert rewrite_imports("from sandbox import fastpath" + body, "t") == "from .. import _runtime as fastpath" + body
    assert rewrite_imports("from sandbox import fastpath as fp" + body, "t") == "from .. import _runtime as fp" + body
    assert rewrite_imports("import sandbox.fastpath as fp" + body, "t") == "from .. import _runtime as fp" + body
    assert rewrite_imports("if True:\n    from sandbox.fastpath import compile\n", "t") == \
        "if True:\n    from .._runtime import compile\n"
    assert rewrite_imports("import math; from sandbox import fastpath\n", "t") == \
        "import math; from .. import _runtime as fastpath\n"
    with pytest.raises(ExportError, match="t: the kernel imports evaluator.rules"):
        rewrite_imports("from evaluator.rules import Policy\n", "t")
    with pytest.raises(ExportError, match="cannot be exported"):
        rewrite_imports("import sandbox\n", "t")


def test_the_runtime_is_generated_from_the_sandbox_sources():
    text = runtime_source("kwk")
    tree = ast.parse(text)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & OURS
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert {"compile", "Library", "build", "CompileSpec", "prototypes", "set_builder"} <= defined
    assert 'os.environ.get("KWK_CACHE")' in text and "KERNELWRIGHT_CACHE" not in text.split("# --- the package's")[1]
    assert text.count("from __future__ import annotations") == 1


@pytest.mark.parametrize("args, message", [
    (["--name", "sandbox"], "Error: --name 'sandbox': use a lower-case Python identifier that is not a kernelwright "
                            "package or torch"),
    (["--min-speedup", "1000"], "Error: no correct kernel in the store with a speedup of at least 1000"),
    (["--device", "cuda"], "Error: no correct kernel in the store measured on cuda"),
])
def test_bad_exports_are_one_line_and_exit_2(db: Path, tmp_path: Path, args: list[str], message: str):
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "pkg"), *args, "--db", str(db)])
    assert result.exit_code == 2 and result.output.strip() == message
    assert not (tmp_path / "pkg").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "full"), "--db", str(db)])
    assert result.exit_code == 2 and "exists and is not empty" in result.output


@pytest.fixture(scope="module")
def slow_db(db: Path, evaluator, tmp_path_factory) -> Path:
    """The review store plus a task whose only kernel is honestly slower than eager."""
    out = tmp_path_factory.mktemp("slow-store") / "kw.db"
    shutil.copyfile(db, out)
    task_file = out.parent / "softmax_slowonly.py"
    # A source of its own: the store keys tasks by source, so a byte copy of softmax_small would
    # rename that task and its best (fast) kernel would stand as this one's.
    task_file.write_text((ROOT / "tests" / "data" / "softmax_small.py").read_text() + "# the slow-only copy\n")
    task = load_task(task_file)
    source = slow()
    verdict = evaluator.evaluate(task, source)
    assert verdict.status.value == "ok" and verdict.speedup < 1, verdict.reason
    with Store.open(str(out), out) as store:
        tasks_before = len(store.tasks())
        task_id = store.upsert_task(task.name, "test", task.source, str(task.path))
        store.record(task_id, source, verdict.record(), origin="user")
        assert len(store.tasks()) == tasks_before + 1  # a new task, not a renamed one
    return out


def test_by_default_only_kernels_faster_than_eager_beyond_their_spread_ship(slow_db: Path, tmp_path: Path):
    out = tmp_path / "pkg"
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--name", "kwk", "--db", str(slow_db), "--json"])
    with Store.open(str(slow_db), slow_db) as store:
        rows = {r["task"]: r for r in store.best()}
        want_out = {t: export_select.verdict(r["speedup"], export_select.spread(store.evaluations(r["candidate_id"])),
                                             None) for t, r in rows.items()}
    assert want_out["softmax_slowonly"].startswith(f"{rows['softmax_slowonly']['speedup']:.2f}x: slower than eager")
    if not any(why == "" for why in want_out.values()):  # a machine too noisy to show any speedup today
        assert result.exit_code == 2 and "is faster than eager by more than its measured spread" in result.output
        assert not out.exists()
        return
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert sorted(e["task"] for e in manifest["tasks"]) == sorted(t for t, why in want_out.items() if not why)
    assert {e["task"]: e["reason"] for e in manifest["left_out"]} == {t: why for t, why in want_out.items() if why}
    assert manifest["rule"] == "it was faster than eager by more than its measured spread"
    readme = (out / "README.md").read_text()
    slow_row = f"| softmax_slowonly | {rows['softmax_slowonly']['speedup']:.2f}x | {want_out['softmax_slowonly']} |"
    assert slow_row in readme
    assert not (out / "kwk" / "references" / "softmax_slowonly.py").exists()


def test_min_speedup_replaces_the_spread_rule(slow_db: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "pkg"), "--name", "kwk", "--min-speedup",
                                      "0.01", "--db", str(slow_db), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert "softmax_slowonly" in [e["task"] for e in manifest["tasks"]] and manifest["left_out"] == []
    assert manifest["rule"] == "its speedup over eager was at least 0.01 (--min-speedup)"


def test_a_failed_export_leaves_nothing_behind(db: Path, tmp_path: Path, monkeypatch):
    """--build with no compiler fails after the whole package was written: none of it stays."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no g++
    out = tmp_path / "made" / "for" / "pkg"
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--name", "kwk", "--min-speedup", "0", "--build",
                                      "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: --build: the kernels could not be built here: ")
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
