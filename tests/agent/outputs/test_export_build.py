"""`kernelwright export --build`: kernels compiled at export, shipped with the machine they were built
for; on this machine they load without a compiler, on another one they are rebuilt or fall back."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the package registers every command
from agent.outputs.export_template._prebuilt import fingerprint
from tests.agent.review_data import review_store

# Run with the package on the path: which path softmax took, why, and where its binary came from.
PROBE = textwrap.dedent("""
    import json, warnings
    import torch
    import kwb
    warnings.simplefilter("ignore")
    y = kwb.softmax(torch.randn(64, 300))
    print(json.dumps([kwb.last_path("softmax"), kwb.last_reason("softmax"), kwb.kernel_origin("softmax")]))
""")


@pytest.fixture(scope="module")
def built(evaluator, tmp_path_factory) -> Path:
    db = review_store(evaluator, tmp_path_factory)
    out = tmp_path_factory.mktemp("export-build") / "project"
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--name", "kwb", "--min-speedup", "0", "--build",
                                      "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return out


def probe(project: Path, tmp_path: Path, compiler: bool) -> list:
    env = {**os.environ, "PYTHONPATH": str(project), "KWB_CACHE": str(tmp_path / "cache")}
    if not compiler:
        (tmp_path / "bin").mkdir(exist_ok=True)
        env["PATH"] = str(tmp_path / "bin")
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_binaries_ship_with_this_machines_fingerprint(built: Path):
    manifest = json.loads((built / "kwb" / "manifest.json").read_text())
    index = json.loads((built / "kwb" / "prebuilt" / "index.json").read_text())
    assert sorted({lib["task"] for lib in index["libs"].values()}) == sorted(e["task"] for e in manifest["tasks"])
    here = dict(fingerprint("cpp"))
    assert all(lib["fingerprint"] == here and (built / "kwb" / "prebuilt" / lib["file"]).stat().st_size > 0
               for lib in index["libs"].values())
    assert manifest["prebuilt"] == {"libs": len(index["libs"]), "fingerprints": [here]}
    assert 'prebuilt/*' in (built / "pyproject.toml").read_text()
    assert f"prebuilt kernel binaries built for: machine {here['machine']}" in (built / "README.md").read_text()


def test_on_this_machine_they_load_without_a_compiler(built: Path, tmp_path: Path):
    assert probe(built, tmp_path, compiler=False) == ["kernel", "", "prebuilt for this machine"]
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_on_another_machine_they_are_rebuilt_or_the_reference_runs(built: Path, tmp_path: Path):
    other = tmp_path / "other"
    shutil.copytree(built, other)
    index_file = other / "kwb" / "prebuilt" / "index.json"
    index = json.loads(index_file.read_text())
    for lib in index["libs"].values():
        lib["fingerprint"]["cpu"] = "Another CPU"
    index_file.write_text(json.dumps(index))
    path, reason, origin = probe(other, tmp_path, compiler=True)
    assert (path, reason) == ("kernel", "")
    assert origin.startswith("built here: the prebuilt binary was built for machine ")
    assert "cpu Another CPU" in origin and f"this machine is machine {fingerprint('cpp')[0][1]}" in origin
    bare = tmp_path / "bare"
    bare.mkdir()
    path, reason, origin = probe(other, bare, compiler=False)
    assert path == "reference" and reason == origin
    assert reason.startswith("the kernel could not be built here: CompileError: kernel failed to compile: the prebuilt "
                             "binary was built for machine") and reason.endswith("compiler not found: g++")
