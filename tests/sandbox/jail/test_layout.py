"""What runs inside the jail imports only what both sides share, never the supervisor's side."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

INSIDE = ("sandbox.jail.forkserver", "sandbox.jail.container", "sandbox.jail.loop", "sandbox.jail.seccomp",
          "evaluator.jail.probe")
SUPERVISOR = ("agent", "store", "sandbox.process", "sandbox.docker", "sandbox.worker", "sandbox.image",
              "sandbox.binscreen", "sandbox.buildscreen", "evaluator.cascade", "evaluator.candidate",
              "evaluator.reference", "evaluator.rounds", "evaluator.verdict")


def test_jail_code_does_not_import_the_supervisor():
    code = (f"import importlib, json, sys\nfor m in {INSIDE!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = json.loads(r.stdout)
    assert all(m in loaded for m in INSIDE)
    leaked = [m for m in loaded if any(m == s or m.startswith(s + ".") for s in SUPERVISOR)]
    assert leaked == [], leaked


def test_the_worker_entry_points_load_nothing_native_before_torch():
    """The fork server and the container entry import their modules before warm() imports torch:
    OpenSSL's libcrypto (hashlib) loaded first made an OpenMP candidate's worker die with SIGSEGV
    in its timing rounds (sandbox/jail/startup.py serve)."""
    for entry in ("sandbox.jail.forkserver", "sandbox.jail.container"):
        code = f"import importlib, json, sys\nimportlib.import_module({entry!r})\nprint(json.dumps(sorted(sys.modules)))"
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        early = set(json.loads(r.stdout)) & {"torch", "hashlib", "_hashlib", "sandbox.compiler"}
        assert early == set(), (entry, early)
