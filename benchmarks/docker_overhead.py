"""Per-evaluation cost of the docker sandbox against the process sandbox.

    python benchmarks/docker_overhead.py [--n 8] [--rounds 2] [--gap S] [--image TAG] [--candidate slow|fast]

Evaluates one candidate on the small softmax task n times in a row under each sandbox (the
reference worker started beforehand, as in a real run) and prints the median wall time per
evaluation, supervisor clock, spawn to verdict: for the process sandbox, for the docker
sandbox with its warm pool (the default) and without one (a cold container per evaluation).
Rounds alternate the sandboxes so that load on the machine falls on all of them alike.
`--gap S` idles S seconds between evaluations (as a loop waiting for its LLM does), which is
when the warm pool can start the next container unseen. The medians of the measured
candidate and reference times are printed too: the sandbox should not change them.
Needs a docker daemon and an image (`kernelwright sandbox build-image`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator.cascade import EvalConfig, Evaluator, TimingConfig
from sandbox.docker import DockerConfig, DockerSandbox, client_or_raise
from sandbox.image import latest_tag
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.spec import load_task
from tests.data.candidates import FAST, slow

TIMING = TimingConfig(warmup=2, min_iters=5, target_s=0.05, round_ms=5.0, min_rounds=3)


def measure(make, task, source: str, n: int, gap: float) -> tuple[list[float], list[tuple[float, float]]]:
    walls, times = [], []
    with make() as sb:
        ev = Evaluator(sb, EvalConfig(timeout_s=60, timing=TIMING))
        if hasattr(sb, "device_lock"):
            sb.device_lock = ev.device_lock
        try:
            ev.reference(task)  # a run starts its reference once; not part of the figure
            for _ in range(n):
                time.sleep(gap)
                t0 = time.perf_counter()
                v = ev.evaluate(task, source)
                walls.append(time.perf_counter() - t0)
                if v.status.value != "ok":
                    raise SystemExit(f"unexpected verdict {v.status.value}: {v.reason}")
                times.append((v.candidate.median_ms, v.reference.median_ms))
        finally:
            ev.close()
    return walls, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="evaluations per sandbox and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gap", type=float, default=0.0, help="seconds idle between evaluations")
    ap.add_argument("--image", default=None, help="docker image (default: the newest kernelwright-sandbox)")
    ap.add_argument("--candidate", choices=("slow", "fast"), default="slow")
    args = ap.parse_args()
    client = client_or_raise()
    image = args.image or latest_tag(client)
    if image is None:
        raise SystemExit("no kernelwright-sandbox image: run `kernelwright sandbox build-image`")
    task = load_task(ROOT / "tests" / "data" / "softmax_small.py")
    source = slow() if args.candidate == "slow" else FAST
    tmp = Path(tempfile.mkdtemp(prefix="kw-bench-"))
    cfg = SandboxConfig(cache_dir=tmp / "cache", root=tmp / "sb", memory_bytes=4 << 30)
    kinds = {
        "process": lambda: ProcessSandbox(cfg),
        "docker (pool 1)": lambda: DockerSandbox(cfg, DockerConfig(image=image, pool=1), client=client),
        "docker (no pool)": lambda: DockerSandbox(cfg, DockerConfig(image=image, pool=0), client=client),
    }
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for name, make in kinds.items():
            w, t = measure(make, task, source, args.n, args.gap)
            walls[name] += w
            times[name] += t
            print(f"round {r + 1} {name:<17} median {statistics.median(w) * 1e3:8.0f} ms per evaluation", flush=True)
    base = statistics.median(walls["process"])
    print(f"\n{args.candidate} candidate, {args.n * args.rounds} evaluations each, {args.gap:g} s apart, image {image}")
    print(f"{'sandbox':<18}{'median s/eval':>14}{'vs process':>12}{'overhead ms':>13}{'candidate ms':>14}{'reference ms':>14}")
    for name in kinds:
        med = statistics.median(walls[name])
        cand = statistics.median(c for c, _ in times[name])
        ref = statistics.median(r for _, r in times[name])
        print(f"{name:<18}{med:>14.3f}{med / base:>11.2f}x{(med - base) * 1e3:>13.0f}{cand:>14.3f}{ref:>14.3f}")


if __name__ == "__main__":
    main()
