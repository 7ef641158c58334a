"""One run specification (agent/runspec.py): built from the flags, stored, read back on --resume.

The drift it ends: `optimize --resume` lost the sandbox, image and max-cost of the run, `batch`
stored sandbox and image but never read them back, and optimize's resume hint showed the
database URL with its password."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.runspec import RunSpec, SpecError, resume_hint, shown_url
from store import Store
from tests.agent.fake_openai import ok
from tests.agent.loop.test_optimize import _kw, fenced, kill_after
from tests.data.candidates import scale

DATA = Path(__file__).resolve().parent.parent / "data"


def test_a_spec_survives_the_store_and_old_records_read_back():
    spec = RunSpec("batch", tasks=("a.py",), sandbox="docker", image="kw:1", max_cost_usd=2.5, time_limit_min=3.0,
                   address="ray://h:1", workers=4)
    assert RunSpec.from_json("batch", json.loads(json.dumps(spec.to_json()))) == spec
    old = {"suite": "cpu", "tasks": [], "strategy": "evolve", "budget": 3, "tuner": "pattern", "tune_fraction": 0.25,
           "seed": 0, "model": None, "base_url": None, "api_key_env": "K", "concurrency": 2, "device": "cpu",
           "max_cost": 1.5, "gone_field": 1}  # a batch record from before the spec: max_cost, no sandbox
    back = RunSpec.from_json("batch", old)
    assert back.max_cost_usd == 1.5 and back.sandbox == "process" and back.budget == 3 and back.api_key_env == "K"
    cfg = RunSpec("optimize", max_cost_usd=2.0, time_limit_min=0.5).optimize_config()
    assert cfg.max_cost_usd == 2.0 and cfg.time_limit_s == 30.0
    per_job = spec.optimize_config()  # a batch shares cost and time out itself
    assert per_job.max_cost_usd is None and per_job.time_limit_s is None


@pytest.mark.parametrize("kw, message", [({"budget": 0}, "--budget"), ({"tune_fraction": 2.0}, "--tune-fraction"),
                                         ({"max_cost_usd": -1.0}, "--max-cost"), ({"time_limit_min": 0.0}, "--time-limit"),
                                         ({"command": "batch", "workers": 0}, "--workers")])
def test_a_spec_that_cannot_run_is_refused_in_one_line(kw, message):
    with pytest.raises(SpecError, match=message):
        RunSpec(**{"command": "optimize", **kw})


def test_urls_shown_never_carry_a_password():
    url = "postgresql+psycopg://kw:s3cret@db.example:5432/kw"
    assert "s3cret" not in shown_url(url) and "db.example" in shown_url(url)
    assert shown_url("/tmp/kw.db") == "/tmp/kw.db"
    hint = resume_hint("optimize", 4, url)
    assert hint.startswith("kernelwright optimize --resume 4 --db ") and "s3cret" not in hint


@pytest.mark.parametrize("command", ["optimize", "batch"])
def test_resume_reads_the_sandbox_and_image_back(command, tmp_path, monkeypatch):
    """A stored run on an image this machine does not have: resuming it must look that image up
    (and fail, in one line), not fall back to the process sandbox of today's defaults."""
    from agent.cli import app  # the package registers every command

    monkeypatch.delenv("KERNELWRIGHT_DEBUG", raising=False)
    db = tmp_path / "kw.db"
    spec = RunSpec(command, sandbox="docker", image="kernelwright-no-such-image:0", max_cost_usd=1.0)
    with Store.open(str(db), tmp_path / "kw.db") as st:
        run_id = st.start_run(command, spec.to_json(), "cpu")
    r = CliRunner().invoke(app, [command, "--resume", str(run_id), "--db", str(db)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "kernelwright-no-such-image:0" in r.output or "docker" in r.output, r.output


def test_a_killed_docker_run_resumes_as_the_same_run(fake_openai, docker_image, tmp_path, cache_dir):
    """Killed mid-run, then `--resume N` alone: the resumed evaluations run in the same docker
    image and the run's max-cost still stops it, counting what was spent before the kill."""
    counter = iter(range(10**6))
    # each call costs about $0.18 at gpt-4o's prices, near the worst case reserved for it
    fake_openai.responder = lambda r: ok(fenced(scale(1 + next(counter) % 5, "v")), tokens_in=40_000,
                                         tokens_out=8_000, delay_s=0.2)
    db = tmp_path / "kw.db"
    args = ["optimize", "--task", str(DATA / "scale_small.py"), "--model", "gpt-4o", "--base-url", fake_openai.url,
            "--budget", "30", "--concurrency", "1", "--max-cost", "1.0", "--sandbox", "docker",
            "--image", docker_image, "--confirm", "0", "--db", str(db), "--json"]
    kill_after(_kw(args, tmp_path, cache_dir), db, 2)
    with sqlite3.connect(db) as c:
        stored = json.loads(c.execute("select config from runs").fetchone()[0])
        calls_before = c.execute("select count(*) from llm_calls").fetchone()[0]
    resumed = _kw(["optimize", "--resume", "1", "--db", str(db), "--json"], tmp_path, cache_dir)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["run_id"] == 1 and summary["stopped_by"] == "max_cost", summary
    assert summary["cost_usd"] <= 1.0 and summary["llm_calls"] > calls_before
    with sqlite3.connect(db) as c:
        assert json.loads(c.execute("select config from runs").fetchone()[0]) == stored
        fingerprints = [json.loads(f) for (f,) in c.execute("select fingerprint from evaluations")]
    assert stored["sandbox"] == "docker" and stored["image"] == docker_image and stored["max_cost_usd"] == 1.0
    assert {f.get("sandbox") for f in fingerprints} == {f"docker {docker_image}"}
    from sandbox.docker import LABEL, client_or_raise
    left = client_or_raise().containers.list(all=True, filters={"label": LABEL, "status": "exited"})
    assert left == []  # the killed run's exited containers were swept by the resumed one, which removed its own


def test_a_resumed_run_keeps_its_model_whatever_the_settings_say_now(tmp_path, cache_dir):
    """A run started with no model (the tuner's), resumed while KERNELWRIGHT_MODEL names one: its
    stored flags stand (no LLM, no key asked for). A new run takes the setting's model."""
    db = tmp_path / "kw.db"
    spec = RunSpec("optimize", tasks=(str(DATA / "scale_small.py"),), budget=1, confirm=0)
    with Store.open(str(db), db) as st:
        run_id = st.start_run("optimize", spec.to_json(), "cpu")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(KERNELWRIGHT_MODEL="gpt-4o", KERNELWRIGHT_CACHE=str(cache_dir), KERNELWRIGHT_TIMEOUT="60")

    def kw(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent.cli", "optimize", *args, "--db", str(db), "--json"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    resumed = kw("--resume", str(run_id))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "No LLM configured" in resumed.stderr and json.loads(resumed.stdout)["llm_calls"] == 0
    with Store.open(str(db), db) as st:
        assert st.run(run_id)["config"]["model"] is None
        runs = len(st.runs(10))
    fresh = kw("--task", str(DATA / "scale_small.py"), "--budget", "1")
    assert fresh.returncode == 2 and "--model gpt-4o: no API key in $OPENAI_API_KEY" in fresh.stderr, fresh.stderr
    with Store.open(str(db), db) as st:
        assert len(st.runs(10)) == runs  # refused before a run was started
