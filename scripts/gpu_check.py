"""The device check: everything GPU-side in one run, on a machine with one NVIDIA GPU.

1. the GPU tests (CUDA fast path, load_inline, Triton; the GPU exploit candidates),
2. every task of the `gpu` suite: its seed at the default knobs, then a short tuner pass
   (configurations sampled from the seed's knob space) while the time budget lasts,
0. the GPU's ceilings (evaluator/gpu_ceilings.py: HBM and L2 bandwidth, fp32 FMA, tensor cores
   per dtype), written to $OUT/gpu_ceilings.json (`kernelwright device --import` stores them)
   and given to the cuda evaluator, so every ok verdict carries a peak fraction,
3. a table: task, status, best speedup vs eager and vs torch.compile, peak fraction, milliseconds, config.
It installs nothing and needs only torch (and triton for the Triton seeds). Results also go
to $OUT/gpu_check.json (or --out) when set.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.loop import knobs
from evaluator import gpu_ceilings
from evaluator.cascade import EvalConfig, Evaluator, TimingConfig
from evaluator.ceilings import CeilingError
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.registry import suite_tasks

TIMING = TimingConfig(warmup=3, min_iters=10, target_s=0.2)


def environment() -> dict:
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gb=round(p.total_memory / 2**30, 1))
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.draw",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["nvidia_smi"] = f"unavailable: {e}"
    return env


def run_gpu_tests(timeout_s: float) -> dict:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/evaluator/test_gpu.py"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        text, code = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as e:
        text, code = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout or ""), -1
    print(text[-2500:], flush=True)
    return {"returncode": code, "seconds": round(time.monotonic() - t0, 1), "tail": text[-3000:]}


def dump(report: dict, out: str) -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))


def device_for(task) -> str:
    host_only = task.meta.input_devices and all(p == "cpu" for p in task.meta.input_devices)
    return "cpu" if host_only or "cuda" not in task.meta.devices else "cuda"


def configs_to_try(source: str, n: int, seed: int = 0) -> list[dict]:
    space = knobs.read_space(source)
    if space is None:
        return []
    default = knobs.current(source)
    others = [c for c in space.configs() if c != {k: default.get(k) for k in c}]
    random.Random(seed).shuffle(others)
    return others[:n]


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop tuning after this much time")
    ap.add_argument("--configs", type=int, default=4, help="tuner configurations per task, besides the default")
    ap.add_argument("--tasks", default="", help="comma-separated task names (default: the whole gpu suite)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--no-ceilings", action="store_true", help="no GPU ceilings: no peak fractions, no gate")
    ap.add_argument("--tests-timeout-s", type=float, default=150.0)
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    args = ap.parse_args()
    t_start = time.monotonic()
    report: dict = {"environment": environment(), "tasks": {}}
    print(json.dumps(report["environment"]), flush=True)

    tasks = [t for t in suite_tasks("gpu") if not args.tasks or t.name in args.tasks.split(",")]
    cache = Path(os.environ.get("KERNELWRIGHT_CACHE", "/tmp/kernelwright-cache"))
    # a GPU machine that refuses CUDA inside the namespaces gets workers without them (sandbox notes say so)
    sandboxes = {d: ProcessSandbox(SandboxConfig(cache_dir=cache, device=d)) for d in ("cpu", "cuda")}
    gpu_ceil = None
    if not args.no_ceilings:
        t0 = time.monotonic()
        try:
            gpu_ceil = gpu_ceilings.measure(sandboxes["cuda"].cfg.threads, cache)
            report["ceilings"] = gpu_ceil.to_json()
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "gpu_ceilings.json").write_text(json.dumps(report["ceilings"], indent=1))
            tf = ", ".join(f"{k} {v:.0f}" for k, v in gpu_ceil.details.get("tflops", {}).items())
            print(f"ceilings ({time.monotonic() - t0:.0f} s): copy {gpu_ceil.copy_gbs:.0f} GB/s, read {gpu_ceil.read_gbs:.0f}; "
                  f"in L2 copy {gpu_ceil.copy_gbs_cached:.0f}, read {gpu_ceil.read_gbs_cached:.0f}; fp32 FMA "
                  f"{gpu_ceil.fma_gflops / 1e3:.1f} TFLOP/s; tensor cores TFLOP/s: {tf}", flush=True)
        except CeilingError as e:
            report["ceilings_error"] = str(e)
            print(f"ceilings: {e}", flush=True)
    evaluators = {d: Evaluator(sb, EvalConfig(device=d, timeout_s=150, timing=TIMING,
                                              ceilings=gpu_ceil if d == "cuda" else None))
                  for d, sb in sandboxes.items()}
    queue: list[tuple[object, dict | None]] = []
    for task in tasks:
        seeds = task.seed_paths()
        if not seeds:
            report["tasks"][task.name] = {"status": "no seed"}
            continue
        source = seeds[0].read_text()
        report["tasks"][task.name] = {"device": device_for(task), "evals": [], "best": None}
        queue.append((task, None))  # the default configuration first, for every task
        queue += [(task, c) for c in configs_to_try(source, args.configs)]
    queue.sort(key=lambda item: item[1] is not None)  # all defaults, then the tuner's picks
    tests_done = args.skip_tests
    try:
        for task, config in queue:
            elapsed = time.monotonic() - t_start
            if config is not None and not tests_done:  # defaults are done: the GPU tests next
                tests_done = True
                left = args.budget_s - elapsed - 30
                report["gpu_tests"] = run_gpu_tests(timeout_s=max(30.0, min(args.tests_timeout_s, left)))
                dump(report, args.out)
                elapsed = time.monotonic() - t_start
            if elapsed > args.budget_s or (config is None and elapsed > args.budget_s - args.tests_timeout_s):
                report["tasks"][task.name].setdefault("skipped", []).append(str(config or "default"))
                continue
            entry = report["tasks"][task.name]
            source = task.seed_paths()[0].read_text()
            if config is not None:
                source = knobs.instantiate(source, config)
            best = entry["best"]
            slow_ms = 2.0 * best["candidate_ms"] if best else None
            t0 = time.monotonic()
            try:
                v = evaluators[entry["device"]].evaluate(task, source, slow_ms=slow_ms)
                row = {"config": config or knobs.current(source), "status": v.status.value, "reason": v.reason[:300],
                       "speedup": v.speedup, "speedup_vs_compile": v.speedup_vs_compile,
                       "candidate_ms": v.candidate.median_ms if v.candidate else None,
                       "reference_ms": v.reference.median_ms if v.reference else None,
                       "compiled_ms": v.reference_compiled.median_ms if v.reference_compiled else None,
                       "early_exit": bool(v.candidate and v.candidate.early_exit), "flags": list(v.flags)[:4],
                       "peak_fraction": v.peak_fraction, "bound": v.bound,
                       "reference_peak_fraction": v.reference_peak_fraction,
                       "seconds": round(time.monotonic() - t0, 1)}
                if v.status.value != "ok":
                    row["log"] = v.log[-1500:]
            except Exception as e:  # noqa: BLE001 - a broken task must not stop the other tasks' checks
                row = {"config": config, "status": "error", "reason": f"{type(e).__name__}: {e}"[:500],
                       "seconds": round(time.monotonic() - t0, 1)}
            entry["evals"].append(row)
            print(f"[{time.monotonic() - t_start:6.1f}s] {task.name:24s} {row['status']:13s} "
                  f"x{row.get('speedup') or 0:.3f} {row.get('reason', '')[:120]}  {row['config']}", flush=True)
            if row["status"] == "ok" and not row["early_exit"] and (
                    best is None or row["candidate_ms"] < best["candidate_ms"]):
                entry["best"] = row
            dump(report, args.out)  # as we go: a run cut short still leaves its figures
    finally:
        for ev in evaluators.values():
            ev.close()
        for sb in sandboxes.values():
            sb.close()

    if not tests_done and time.monotonic() - t_start < args.budget_s:
        report["gpu_tests"] = run_gpu_tests(timeout_s=args.tests_timeout_s)
    report["sandbox_notes"] = {d: sb.notes for d, sb in sandboxes.items()}
    report["seconds"] = round(time.monotonic() - t_start, 1)
    lines = [f"{'task':24s} {'device':6s} {'status':13s} {'vs eager':>9s} {'vs compile':>10s} {'peak':>6s} {'ref pk':>6s} {'ms':>9s} {'ref ms':>9s} evals  best config"]
    for name, entry in report["tasks"].items():
        best = entry.get("best") or (entry.get("evals") or [{}])[0]
        sc = best.get("speedup_vs_compile")
        lines.append(f"{name:24s} {entry.get('device', ''):6s} {best.get('status', entry.get('status', '-')):13s} "
                     f"{best.get('speedup') or 0:9.3f} {sc if sc is None else round(sc, 3)!s:>10s} "
                     f"{_pct(best.get('peak_fraction')):>6s} {_pct(best.get('reference_peak_fraction')):>6s} "
                     f"{best.get('candidate_ms') or 0:9.4f} {best.get('reference_ms') or 0:9.4f} "
                     f"{len(entry.get('evals', [])):5d}  {best.get('config')}")
    dump(report, args.out)
    print("\n".join(lines), flush=True)
    print(f"gpu tests: {report.get('gpu_tests', {}).get('tail', '').strip().splitlines()[-1:] or ['skipped']}")
    print(f"total {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
