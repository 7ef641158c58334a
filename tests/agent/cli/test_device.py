"""`kernelwright device`: the ceilings of the timing cores, measured once and then read from the store."""
from __future__ import annotations

import dataclasses
import json

import pytest

from agent.runtime import UserError, machine_ceilings, options
from evaluator import ceilings
from tests.agent.cli.test_evaluate import kw

FIELDS = ("device", "fingerprint_id", "cores", "threads", "copy_gbs", "read_gbs", "copy_gbs_cached",
          "read_gbs_cached", "fma_gflops", "measured_at", "llc_bytes")


def test_device_json_measures_what_is_missing_then_reads_the_store(tmp_path, cache_dir):
    db = str(tmp_path / "dev.db")
    # --quick (hidden): tiny sizes, so that this takes about a second
    first = kw("device", "--json", "--quick", "--db", db, cwd=tmp_path, cache=cache_dir, timeout=120)
    assert first.returncode == 0, first.stderr
    a = json.loads(first.stdout)
    assert set(FIELDS) <= set(a) and a["measured_now"] is True and a["device"] == "cpu"
    assert a["copy_gbs"] > 0 and a["fma_gflops"] > 0 and a["cores"] and a["threads"] >= 1
    again = json.loads(kw("device", "--json", "--quick", "--db", db, cwd=tmp_path, cache=cache_dir).stdout)
    assert again == {**a, "measured_now": False}
    fresh = json.loads(kw("device", "--json", "--quick", "--remeasure", "--db", db, cwd=tmp_path, cache=cache_dir).stdout)
    assert fresh["measured_now"] is True and fresh["measured_at"] > a["measured_at"]
    shown = kw("device", "--db", db, cwd=tmp_path, cache=cache_dir)
    assert shown.returncode == 0 and "from the store" in shown.stdout and "out of cache" in shown.stdout


def test_device_imports_gpu_ceilings_and_bad_input_is_one_line_exit_2(tmp_path, cache_dir):
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"device": "cuda", "fingerprint_id": "g1", "copy_gbs": 3000.0, "tflops": {"bf16": 700.0}}))
    r = kw("device", "--json", "--import", str(gpu), "--db", str(tmp_path / "g.db"), cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["device"] == "cuda" and json.loads(r.stdout)["details"]["tflops"] == {"bf16": 700.0}
    (tmp_path / "bad.json").write_text("{}")
    for args in (["--import", "bad.json"], ["--import", "missing.json"], ["--db", "nosuch://x"]):
        r = kw("device", *args, "--db", str(tmp_path / "b.db"), cwd=tmp_path, cache=cache_dir) if args[0] != "--db" \
            else kw("device", *args, cwd=tmp_path, cache=cache_dir)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error:"), (args, r.stderr)


def test_evaluators_get_the_stored_ceilings_and_tiny_ones_never_pass_for_real(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("KERNELWRIGHT_CACHE", str(cache_dir))
    opts = options(str(tmp_path / "c.db"), "cpu", None)
    assert opts.ceilings == "quick"  # tests/conftest.py
    first = machine_ceilings(opts)
    assert first.details["quick"] is True and machine_ceilings(opts) == first  # measured once, then stored
    asked, real = [], ceilings.measure

    def measure(*args, sizes, **kw):  # what a real run asks for, measured tiny to stay quick
        asked.append(sizes)
        found = real(*args, sizes=ceilings.Sizes.tiny(), **kw)
        return dataclasses.replace(found, details={**found.details, "quick": False})

    monkeypatch.setattr(ceilings, "measure", measure)
    full = machine_ceilings(dataclasses.replace(opts, ceilings="measure"))
    assert asked == [ceilings.Sizes()] and full.details["quick"] is False
    assert machine_ceilings(dataclasses.replace(opts, ceilings="measure")) == full and len(asked) == 1
    assert machine_ceilings(dataclasses.replace(opts, ceilings="off")) is None
    with pytest.raises(UserError, match="no CUDA device visible"):  # this machine has no GPU to measure
        machine_ceilings(dataclasses.replace(opts, device="cuda"))
    monkeypatch.setenv("KERNELWRIGHT_CEILINGS", "sometimes")
    with pytest.raises(UserError, match="KERNELWRIGHT_CEILINGS"):
        options(None, "cpu", None)
