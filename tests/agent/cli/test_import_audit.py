"""`kernelwright import` and `audit`: a CUDA-L1-format release of C++ candidates (legit, wrong,
cheating, missing) re-judged for real, claimed beside measured, resumable; the parsers' errors."""
from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from agent.loop import importers
from tests.agent.loop.test_optimize import _kw

DATA = Path(__file__).resolve().parents[2] / "data"
RELU_TASK = (DATA / "kernelbench_current" / "KernelBench" / "level1" / "19_ReLU.py").read_text()

_HEAD = '''
import torch
import torch.nn as nn
from sandbox import fastpath

_lib = fastpath.compile(r"""
#include <cstdint>
extern "C" void k(float* out, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = BODY;
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        x = PRE.contiguous()
        out = torch.empty_like(x)
        _lib.k(out, x, x.numel())
        return out
'''


def candidate(body: str, pre: str = "x") -> str:
    return _HEAD.replace("BODY", body).replace("PRE", pre)


LEGIT = candidate("x[i] > 0.f ? x[i] : 0.f")
WRONG = candidate("x[i]")  # forgot the ReLU: incorrect, whatever it claims
TORCH = candidate("x[i]", pre="torch.relu(x)")  # PyTorch computes, the kernel copies: strict rejects it


def release(path: Path) -> Path:
    lines = [{"level_id": 1, "task_id": 19, "ref_code": RELU_TASK, "custom_code": LEGIT, "score_default": 3.0,
              "score_torch_compile_default": 2.0},
             {"level_id": 1, "task_id": 119, "ref_code": RELU_TASK, "custom_code": WRONG, "score_default": 2.5},
             {"level_id": 1, "task_id": 219, "ref_code": RELU_TASK, "custom_code": TORCH, "score_default": 9.0},
             {"level_id": 1, "task_id": 319, "ref_code": RELU_TASK, "custom_code": "", "score_default": None}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _run(args: list[str], tmp: Path, cache: Path) -> dict:
    proc = _kw(args, tmp, cache)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_import_a_cuda_l1_release_and_audit_it(tmp_path, cache_dir):
    db = tmp_path / "kw.db"
    src = release(tmp_path / "cuda_l1.jsonl")
    common = ["--policy", "strict", "--scale", "0.25", "--db", str(db), "--json"]
    first = _run(["import", "cuda-l1", str(src), "--limit", "2", *common], tmp_path, cache_dir)
    assert first["left"] == 1 and len(first["rows"]) == 2
    assert first["skipped"] == ["level 1 task 319: no custom_code"]
    run_id = first["run_id"]
    again = _run(["import", "--resume", str(run_id), "--db", str(db), "--json"], tmp_path, cache_dir)
    assert again["run_id"] == run_id and again["left"] == 0
    with sqlite3.connect(db) as c:
        evaluated = c.execute("select count(*) from evaluations where run_id = ?", (run_id,)).fetchone()[0]
        sources = c.execute("select distinct t.source from tasks t").fetchall()
        status = c.execute("select status from runs where id = ?", (run_id,)).fetchone()[0]
    assert evaluated == 3 and status == "finished"  # resumed: nothing judged twice
    assert all("scaled by 0.25" in s for s, in sources)  # dim 16384 -> 4096, recorded with the task

    audit = _run(["audit", "--db", str(db), "--json"], tmp_path, cache_dir)
    rows = {r["key"]: r for r in audit["rows"]}
    assert set(rows) == {"line 1", "line 2", "line 3"}
    legit, wrong, torch_ = rows["line 1"], rows["line 2"], rows["line 3"]
    assert (legit["status"], legit["claimed"], legit["policy"]) == ("ok", 3.0, "strict"), legit["reason"]
    assert legit["measured"] is not None and legit["measured"] > 0
    assert legit["held"] == (legit["measured"] >= 1.0)
    assert (wrong["status"], wrong["measured"], wrong["held"]) == ("incorrect", None, False)
    assert torch_["status"] == "rejected" and torch_["reason"].startswith("pytorch_compute") and not torch_["held"]
    t = audit["totals"]
    assert t["candidates"] == 3 and t["held_up"] == int(legit["held"])
    assert t["by_status"] == {"ok": 1, "incorrect": 1, "rejected": 1}
    assert t["reasons"]["rejected: pytorch_compute"] == 1
    assert t["compared"] == 1 and t["geomean_claimed"] == pytest.approx(3.0)
    assert t["geomean_measured"] == pytest.approx(legit["measured"])
    with sqlite3.connect(db) as c:
        claims = c.execute("select claimed_speedup, details from claims where run_id = ?", (run_id,)).fetchall()
    assert sorted(s for s, _ in claims) == [2.5, 3.0, 9.0]
    assert any(json.loads(d).get("score_torch_compile_default") == 2.0 for _, d in claims)  # every figure kept

    text = _kw(["audit", "--run", str(run_id), "--db", str(db)], tmp_path, cache_dir)
    out, err = text.communicate(timeout=120)
    assert text.returncode == 0, err
    assert "claimed vs measured" in out and "pytorch_compute" in out and "claims hold up" in out
    report = tmp_path / "r.html"
    proc = _kw(["report", "--out", str(report), "--db", str(db)], tmp_path, cache_dir)
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]
    html = report.read_text()
    assert "Imported candidates: claimed vs measured" in html and 'id="audit"' in html
    assert "3.00x" in html and "9.00x" in html


def test_a_folder_under_the_kernelbench_policy(tmp_path, cache_dir):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "relu.py").write_text(RELU_TASK)
    (folder / "relu_new.py").write_text(TORCH)
    (folder / "relu_new.json").write_text(json.dumps({"speedup": 1.5}))
    (folder / "orphan_new.py").write_text(LEGIT)
    out = _run(["import", "folder", str(folder), "--scale", "0.25", "--db", str(tmp_path / "kw.db"), "--json"],
               tmp_path, cache_dir)
    assert out["skipped"] == ["orphan_new.py: no orphan.py beside it"]
    (row,) = out["rows"]
    assert (row["task"], row["status"], row["policy"], row["claimed"]) == ("relu", "ok", "kernelbench", 1.5)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cache_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ref_code": RELU_TASK, "custom_code": LEGIT}) + "\n{not json\n")
    db = tmp_path / "kw.db"
    for args, words in ((["import", "cuda-l1", str(bad)], f"{bad}:2: not JSON"),
                        (["import", "nope", str(bad)], "unknown format 'nope'"),
                        (["import", "cuda-l1", str(tmp_path / "missing.jsonl")], "no such file"),
                        (["import", "kernelbench", str(tmp_path)], "needs --kernelbench"),
                        (["import", "cuda-l1"], "needs FORMAT and FILE"),
                        (["audit"], "no import run")):
        proc = _kw([*args, "--db", str(db)], tmp_path, cache_dir)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err.strip().splitlines() == [f"Error: {err.strip()[7:]}"], (args, err)
        assert words in err, (args, err)
        if args[0] == "import":
            assert not db.exists(), args  # nothing written halfway


def test_parsers(tmp_path):
    src = release(tmp_path / "r.jsonl")
    parsed = importers.parse("cuda-l1", src)
    assert [i.key for i in parsed.items] == ["line 1", "line 2", "line 3"]
    assert parsed.items[0].task_name == "cudal1_l1_19" and parsed.items[0].claimed["speedup"] == 3.0
    assert parsed.items[0].claimed["score_torch_compile_default"] == 2.0
    (tmp_path / "no_ref.jsonl").write_text(json.dumps({"custom_code": LEGIT}) + "\n")
    with pytest.raises(importers.ImportFormatError, match=r"no_ref.jsonl:1: a record needs ref_code"):
        importers.parse("cuda-l1", tmp_path / "no_ref.jsonl")
    gens = tmp_path / "gens"
    gens.mkdir()
    (gens / "level_1_problem_19_sample_0_kernel.py").write_text(LEGIT)
    (gens / "level_1_problem_99_sample_0_kernel.py").write_text(LEGIT)
    (gens / "notes.py").write_text("")

    class T:
        name, path = "kb_l1_19_relu", Path("/x/19_ReLU.py")

    got = importers.parse("kernelbench", gens, {(1, 19): T()})
    assert [(i.key, i.task_name, i.task_path) for i in got.items] == [
        ("level_1_problem_19_sample_0_kernel", "kb_l1_19_relu", "/x/19_ReLU.py")]
    assert got.skipped == ("level_1_problem_99_sample_0_kernel.py: no level 1 problem 99 in the checkout",)


def test_ctrl_c_stops_an_import_and_resume_finishes_it(tmp_path, cache_dir):
    db = tmp_path / "kw.db"
    src = release(tmp_path / "r.jsonl")
    proc = _kw(["import", "cuda-l1", str(src), "--scale", "0.25", "--db", str(db)], tmp_path, cache_dir)
    deadline = time.monotonic() + 240
    while _claims(db) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Resume with: kernelwright import --resume 1" in err
    with sqlite3.connect(db) as c:
        assert c.execute("select status from runs").fetchone()[0] == "interrupted"
    done = _run(["import", "--resume", "1", "--db", str(db), "--json"], tmp_path, cache_dir)
    assert len(done["rows"]) == 3 and done["left"] == 0
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from evaluations").fetchone()[0] <= 4  # at most the interrupted one again


def _claims(db: Path) -> int:
    try:
        with sqlite3.connect(db) as c:
            return c.execute("select count(*) from claims").fetchone()[0]
    except sqlite3.Error:
        return 0
