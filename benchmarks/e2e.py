"""End to end: the cpu suite's layer kernels exported and applied to a small transformer.

    python benchmarks/e2e.py [--db URL] [--measurements 2] [--threads 1,2] [--norms layernorm,rmsnorm]
                             [--size small] [--repeats 30] [--out RESULT.json]

1. Each seed of softmax, rmsnorm, layernorm, gelu_linear and causal_attention is evaluated
   `--measurements` times with `kernelwright eval` (the process sandbox, timing cores apart)
   into a fresh store, unless `--db` names a store that already has them.
2. Two packages are exported from it: `kw_helps` by the default rule (kernels faster than eager
   by more than their measured spread) and `kw_all` with `--min-speedup 0` (every correct one).
3. `kernelwright e2e` runs each package on the transformer, per norm and thread count: output
   parity against the untouched model and the end-to-end speedup, eager and under torch.compile.
Figures only; nothing here asserts. Every step goes through the CLI, as a user would run it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tasks" / "suites" / "cpu"
TASKS = ("softmax", "rmsnorm", "layernorm", "gelu_linear", "causal_attention")


def kw(*args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> dict:
    r = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--json"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=3600)
    if r.returncode not in ok:
        raise SystemExit(f"kernelwright {' '.join(args)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}")
    return json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"error": r.stderr.strip()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="", help="a store that already holds the kernels (else a fresh one)")
    ap.add_argument("--measurements", type=int, default=2, help="evaluations of each seed")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts for the e2e runs")
    ap.add_argument("--norms", default="layernorm,rmsnorm")
    ap.add_argument("--size", default="small")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kw-e2e-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KW_HELPS_CACHE": str(work / "cache"),
           "KW_ALL_CACHE": str(work / "cache")}
    db = args.db or str(work / "kw.db")
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                    "evaluations": [], "packages": {}, "e2e": []}
    if not args.db:
        for task in TASKS:
            for _ in range(args.measurements):
                v = kw("eval", str(SUITE / f"{task}.py"), str(SUITE / "seeds" / f"{task}_seed.py"), "--db", db, env=env)
                result["evaluations"].append({k: v.get(k) for k in ("task", "status", "reason", "speedup",
                                                                   "candidate_ms", "reference_ms")})
                print(f"eval {task:18s} {v['status']:10s} {v.get('speedup') or 0:6.2f}x", flush=True)
    packages = {}
    for name, rule in (("kw_helps", []), ("kw_all", ["--min-speedup", "0"])):
        out = work / name
        m = kw("export", "--out", str(out), "--name", name, *rule, "--db", db, env=env, ok=(0, 2))
        if "error" in m:
            print(f"export {name}: {m['error']}")
            continue
        packages[name] = out
        result["packages"][name] = {"shipped": [(e["task"], round(e["speedup"], 3)) for e in m["tasks"]],
                                    "left_out": [(e["task"], e["reason"]) for e in m["left_out"]]}
        print(f"export {name}: ships {result['packages'][name]['shipped']}", flush=True)
        for task, why in result["packages"][name]["left_out"]:
            print(f"    left out {task}: {why}")
    for name, out in packages.items():
        for norm in args.norms.split(","):
            for threads in args.threads.split(","):
                r = kw("e2e", "--package", str(out), "--size", args.size, "--norm", norm, "--threads", threads,
                       "--repeats", str(args.repeats), *(["--no-compile"] if args.no_compile else []), env=env,
                       ok=(0, 1))
                result["e2e"].append({"package": name, "norm": norm, "threads": int(threads), **r})
                for run, x in r["runs"].items():
                    worst = max(p["max_abs"] for p in x["parity"].values())
                    t = x["timing"]
                    print(f"e2e {name:9s} {norm:9s} threads {threads} {run:8s} base {t['base']['median_ms']:8.3f} ms "
                          f"applied {t['applied']['median_ms']:8.3f} ms  speedup {x['speedup']:5.2f}x  "
                          f"max abs err {worst:.2g}  parity {'ok' if r['parity_ok'] else 'FAILED'}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
