"""The GPU path of `kernelwright import` and `audit`: a CUDA-L1-format release of load_inline CUDA
candidates for KernelBench's softmax (level 1 problem 23), re-judged on this GPU under the
kernelbench policy. The load_inline builds go through the supervisor (sandbox/extension.py) for
the GPU's own architecture. Expected: the CUDA kernel ok, its broken twin incorrect, a
PyTorch-only rewrite (most of CUDA-L1's answers are) rejected as ghost_kernel. Prints the audit;
exit 1 when a verdict differs.
    python scripts/gpu_import.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SOFTMAX = (DATA / "kernelbench_current" / "KernelBench" / "level1" / "23_Softmax.py").read_text()
CUDA = (DATA / "cuda_load_inline.py").read_text()
BROKEN = CUDA.replace("* inv;", ";").replace('"kw_cuda_softmax"', '"kw_cuda_softmax_broken"')
TORCH_ONLY = '''import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.softmax(x.contiguous(), dim=1)
'''
EXPECTED = {"line 1": "ok", "line 2": "incorrect", "line 3": "rejected"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    assert BROKEN != CUDA
    out = args.out or Path(tempfile.mkdtemp(prefix="kw-gpu-import-"))
    out.mkdir(parents=True, exist_ok=True)
    release = out / "cuda_l1_gpu.jsonl"
    records = [(CUDA, 2.1), (BROKEN, 3.0), (TORCH_ONLY, 1.2)]
    release.write_text("".join(json.dumps({"level_id": 1, "task_id": 23 + 100 * i, "ref_code": SOFTMAX,
                                           "custom_code": code, "score_default": claim}) + "\n"
                               for i, (code, claim) in enumerate(records)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERNELWRIGHT_CACHE": str(out / "cache")}
    cmd = [sys.executable, "-m", "agent.cli", "import", "cuda-l1", str(release), "--device", "cuda",
           "--policy", "kernelbench", "--db", str(out / "import.db"), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        print(f"import failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return 1
    audit = json.loads(proc.stdout)
    print("| candidate | claimed | measured | status | reason |")
    print("|---|---|---|---|---|")
    bad = 0
    for r in audit["rows"]:
        fmt = (lambda x: "-" if x is None else f"{x:.2f}x")
        print(f"| {r['key']} | {fmt(r['claimed'])} | {fmt(r['measured'])} | {r['status']} | "
              f"{(r['reason'] or '').splitlines()[0][:80] if r['reason'] else ''} |")
        bad += EXPECTED.get(r["key"]) != r["status"]
    t = audit["totals"]
    print(f"\nheld up {t['held_up']}/{t['candidates']}; geomean claimed {t['geomean_claimed']}, "
          f"measured {t['geomean_measured']}; reasons {t['reasons']}")
    if len(audit["rows"]) != len(EXPECTED) or bad:
        print(f"UNEXPECTED: want {EXPECTED}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
