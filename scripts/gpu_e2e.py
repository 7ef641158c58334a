"""The GPU end-to-end check: the gpu suite's kernels exported and applied to a transformer.

1. evaluate the seeds of the gpu suite's tasks that stand for a transformer's layers (causal
   attention prefill at head dims 64 and 128) on the GPU, into a temporary store;
2. export them as a package (`kernelwright export --device cuda`: only kernels faster than eager
   beyond their spread; if none is, every correct one, and the report says so);
3. `kernelwright e2e` on a bf16 transformer on the GPU (head dim 64, RMSNorm), eagerly and
   under torch.compile: output parity against the untouched model and the end-to-end speedup.
Run by scripts/gpu_check.sh after scripts/gpu_check.py; writes $OUT/gpu_e2e.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.outputs.e2e import E2EConfig, load_package, run
from agent.outputs.e2e_model import TransformerConfig
from agent.outputs.export import ExportConfig, ExportError, export
from evaluator.cascade import EvalConfig, Evaluator, TimingConfig
from sandbox.process import ProcessSandbox, SandboxConfig
from store import Store
from tasks.registry import suite_tasks

TASKS = ("attention_prefill_d64", "attention_prefill_d128")
MODEL = TransformerConfig(vocab=8192, d_model=1024, heads=16, layers=4, d_ff=4096, seq=1024, batch=4, norm="rmsnorm",
                          dtype="bfloat16")


def evaluate_into(db: Path, names: list[str], cache: Path) -> list[dict]:
    rows = []
    tasks = [t for t in suite_tasks("gpu") if t.name in names]
    with ProcessSandbox(SandboxConfig(cache_dir=cache, device="cuda")) as sb, Store.open(str(db), db) as store:
        ev = Evaluator(sb, EvalConfig(device="cuda", timeout_s=300, timing=TimingConfig(warmup=3, min_iters=10,
                                                                                          target_s=0.2)))
        try:
            run_id = store.start_run("eval", {"suite": "gpu", "tasks": names}, "cuda")
            for task in tasks:
                source = task.seed_paths()[0].read_text()
                t0 = time.monotonic()
                v = ev.evaluate(task, source)
                task_id = store.upsert_task(task.name, task.meta.suite, task.source, str(task.path))
                store.record(task_id, source, v.record(), origin="seed", run_id=run_id)
                rows.append({"task": task.name, "status": v.status.value, "reason": v.reason[:300],
                             "speedup": v.speedup, "seconds": round(time.monotonic() - t0, 1)})
                print(f"{task.name:24s} {v.status.value:10s} x{v.speedup or 0:.3f} {v.reason[:120]}", flush=True)
            store.finish_run(run_id, "finished")
        finally:
            ev.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    args = ap.parse_args()
    report: dict = {"model": MODEL.__dict__}
    with tempfile.TemporaryDirectory(prefix="kw-gpu-e2e-") as tmp:
        work = Path(tmp)
        cache = Path(os.environ.get("KERNELWRIGHT_CACHE", "/tmp/kernelwright-cache"))
        report["evaluations"] = evaluate_into(work / "kw.db", args.tasks.split(","), cache)
        with Store.open(str(work / "kw.db"), work / "kw.db") as store:
            try:
                manifest = export(store, ExportConfig(out=work / "pkg", name="kw_gpu", device="cuda"))
                report["export"] = "kernels faster than eager beyond their spread"
            except ExportError as e:
                report["export"] = f"every correct kernel ({e})"
                manifest = export(store, ExportConfig(out=work / "pkg", name="kw_gpu", device="cuda", min_speedup=0))
        report["shipped"] = [(e["task"], e["speedup"], (e.get("binding") or {}).get("pattern"))
                             for e in manifest["tasks"]]
        report["left_out"] = manifest["left_out"]
        os.environ.setdefault("KW_GPU_CACHE", str(work / "pkg-cache"))
        package = load_package(work / "pkg")
        report["e2e"] = run(package, E2EConfig(model=MODEL, device="cuda", repeats=args.repeats))
    e2e = report["e2e"]
    for name, r in e2e["runs"].items():
        worst = max(p["max_abs"] for p in r["parity"].values())
        print(f"e2e {name:8s} speedup {r['speedup']:.3f}x  base {r['timing']['base']['median_ms']:.3f} ms  applied "
              f"{r['timing']['applied']['median_ms']:.3f} ms  max abs err {worst:.3g}  calls {r['calls']}", flush=True)
    print(f"replaced: {[(r['path'], r['task']) for r in e2e['replaced']]}; parity ok: {e2e['parity_ok']}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_e2e.json").write_text(json.dumps(report, indent=1, default=str))
    return 0 if e2e["parity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
