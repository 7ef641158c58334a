"""Coverage: which code the candidate's worker really spent its timed rounds in.

The supervisor samples every thread of the worker from outside (sandbox/sampler.py: a cpu-clock
perf event the worker holds no handle to) during each timed round, and maps each sample to the
file it fell in. `share` is the fraction in the candidate's own libraries, the ones the
supervisor built for it; the rest is PyTorch (allocation, and the harness's checksums), the
interpreter, libc, the kernel. The in-worker dispatch recorder stays as a cheaper second signal;
this one does not depend on anything the candidate can reach.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterable, Iterator

# Neither side's compute: the OS (page faults of fresh outputs), the interpreter that calls
# either side (a tiny kernel's forward is mostly that), and the runtimes a kernel calls into and
# PyTorch shares (libc, libm, libstdc++, OpenMP): a sample there says nothing of whose work it is.
NEUTRAL = ("kernel", "python", "libc", "openmp")
PERIOD_NS = 100_000  # 10 kHz: about 200 samples in the 20 ms round sampled (evaluator/rounds.py sampled_round)


@dataclasses.dataclass(frozen=True)
class Coverage:
    share: float | None  # of the samples in code that computes (not NEUTRAL), the candidate's own; None without any
    samples: int
    categories: dict[str, int]  # own, torch, python, libc, openmp, kernel, anon, other
    mode: str  # how the sampler followed the worker's threads ("cgroup" or "threads")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        total = max(1, sum(self.categories.values()))
        parts = [f"{k} {100 * v / total:.0f}%" for k, v in sorted(self.categories.items(), key=lambda kv: -kv[1]) if v]
        return ", ".join(parts[:5])


class Watch:
    """The sampler on one worker for the duration of its timing phase; never fatal: where perf
    events are refused, `unavailable` says why and the verdict has no coverage."""

    def __init__(self, proc: Any, period_ns: int = PERIOD_NS):
        from sandbox.sampler import Sampler, SamplerUnavailable

        self.sampler: Any = None
        self.unavailable = ""
        self._result: Coverage | None = None
        pid = proc.worker_pid() if hasattr(proc, "worker_pid") else None
        if pid is None:
            self.unavailable = "the sandbox cannot name the worker's process"
            return
        try:
            self.sampler = Sampler.open(pid, getattr(proc, "cgroup_dir", lambda: None)(), period_ns)
        except (SamplerUnavailable, ProcessLookupError, OSError) as e:
            self.unavailable = f"perf sampling refused: {e}"[:200]

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        if self.sampler is None:
            yield
            return
        self.sampler.start()
        try:
            yield
        finally:
            self.sampler.stop()
            self.sampler.drain()  # between rounds: the rings hold about a second of samples

    def result(self, own_paths: Iterable[str | Path], own_prefix: str = "") -> Coverage | None:
        """Once, after the rounds (later calls return the same). own_prefix: files under it that
        the worker mapped count as its own too (load_inline's extensions)."""
        if self.sampler is None:
            return self._result
        own = [str(p) for p in own_paths]
        if own_prefix:
            for text in self.sampler.maps().values():
                own += [ln.split(None, 5)[5].strip() for ln in text.splitlines()
                        if len(ln.split(None, 5)) > 5 and ln.split(None, 5)[5].startswith(own_prefix)]
        a = self.sampler.attribution(own)
        judged = a.samples - sum(a.categories.get(c, 0) for c in NEUTRAL)
        self._result = Coverage(a.own / judged if judged else None, a.samples, dict(a.categories), self.sampler.mode)
        return self._result

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


def check(cov: Coverage | None, min_share: float, min_samples: int = 50) -> str | None:
    """The strict policy's rule: the candidate's own code must carry the timed calls (on CUDA
    the profiler's kernel times, which need no sample count)."""
    if cov is None or cov.share is None or min_share <= 0:
        return None
    if not cov.mode.startswith("cuda") and cov.samples < min_samples:
        return None
    if cov.share < min_share:
        what = "GPU time of a checked call" if cov.mode.startswith("cuda") else "timed rounds' CPU samples"
        return (f"low_coverage: {100 * cov.share:.0f}% of the {what} were in the candidate's "
                f"own code, {100 * min_share:.0f}% required ({cov.describe()}; {cov.samples} samples)")
    return None


def from_gpu_profile(spent: dict[str, float], kernel_names: set[str]) -> Coverage | None:
    """Coverage on CUDA: the share of a checked call's GPU time in the candidate's own kernels
    (by name), from the profiler inside the worker. A claim, unlike the CPU sampler: native code
    in the worker could forge the profiler's events; the supervisor's clock and the outputs do
    not depend on it."""
    total = sum(spent.values())
    if not spent or total <= 0:
        return None
    own = sum(us for name, us in spent.items() if any(k in name for k in kernel_names))
    return Coverage(own / total, len(spent), {"own": round(own), "other": round(total - own)},
                    "cuda profiler (in the worker)")
