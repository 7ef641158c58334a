"""The evaluator's typed results: what every other part of kernelwright trusts.

A Verdict is decided by the supervisor from raw data; nothing here is filled from what the
candidate's worker claims about itself.
"""
from __future__ import annotations

import dataclasses
import enum
import statistics
from typing import Any


class Status(str, enum.Enum):
    OK = "ok"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    INCORRECT = "incorrect"
    REJECTED = "rejected"


@dataclasses.dataclass(frozen=True)
class OutputError:
    """How far one output of one trial was from the reference."""

    index: int
    max_abs: float
    max_rel: float
    mismatch_frac: float  # fraction of elements outside atol + rtol*|ref|
    ok: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One correctness trial: which inputs, and the error of each output."""

    name: str  # e.g. "seed0/normal", "variant1/heavy", "post-timing"
    ok: bool
    errors: tuple[OutputError, ...] = ()
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Timing:
    """Raw per-iteration timings of one side (candidate or reference), in ms."""

    samples_ms: tuple[float, ...]
    median_ms: float
    spread_ms: float  # interquartile range
    wall_ms: float  # supervisor's own clock around the whole timing phase
    early_exit: bool = False
    overhead_ms: float = 0.0  # per call: supervisor wall time not inside a timed call
    warmup_ms: tuple[float, ...] = ()

    @staticmethod
    def from_samples(samples_ms: list[float], wall_ms: float, early_exit: bool = False,
                     overhead_ms: float = 0.0, warmup_ms: list[float] = ()) -> "Timing":
        s = sorted(samples_ms)
        n = len(s)

        def q(p: float) -> float:
            if n == 1:
                return s[0]
            x = p * (n - 1)
            lo = int(x)
            hi = min(lo + 1, n - 1)
            return s[lo] + (s[hi] - s[lo]) * (x - lo)

        return Timing(tuple(samples_ms), q(0.5), q(0.75) - q(0.25), wall_ms, early_exit, overhead_ms, tuple(warmup_ms))

    @staticmethod
    def pooled(windows: list["Timing"]) -> "Timing":
        """Several timing windows of one side as one: the median of the windows' medians (a
        window the machine slowed down moves it least), the samples and spread of all of them."""
        if len(windows) == 1:
            return windows[0]
        t = Timing.from_samples([x for w in windows for x in w.samples_ms], sum(w.wall_ms for w in windows),
                                any(w.early_exit for w in windows),
                                sum(w.overhead_ms for w in windows) / len(windows), list(windows[-1].warmup_ms))
        return dataclasses.replace(t, median_ms=statistics.median(w.median_ms for w in windows))


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str = ""
    trials: tuple[Trial, ...] = ()
    candidate: Timing | None = None
    reference: Timing | None = None
    reference_compiled: Timing | None = None  # torch.compile(Model), on GPUs
    flags: tuple[str, ...] = ()
    fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> seconds
    log: str = ""  # tail of the worker's stdout/stderr, for repair prompts; untrusted text
    resources: tuple[dict[str, Any], ...] = ()  # ptxas's per-kernel report of the CUDA builds

    @property
    def correct(self) -> bool:
        return self.status is Status.OK

    @property
    def speedup(self) -> float | None:
        if self.status is not Status.OK or not self.candidate or not self.reference:
            return None
        if self.candidate.median_ms <= 0:
            return None
        return self.reference.median_ms / self.candidate.median_ms

    @property
    def speedup_vs_compile(self) -> float | None:
        if self.speedup is None or not self.reference_compiled or not self.candidate:
            return None
        return self.reference_compiled.median_ms / self.candidate.median_ms

    def to_json(self) -> dict[str, Any]:
        """The `kernelwright eval --json` object (candidate_id is added by the caller)."""
        return {
            "status": self.status.value,
            "reason": self.reason,
            "correct": self.correct,
            "speedup": self.speedup,
            "candidate_ms": self.candidate.median_ms if self.candidate else None,
            "reference_ms": self.reference.median_ms if self.reference else None,
            "reference_compiled_ms": self.reference_compiled.median_ms if self.reference_compiled else None,
            "speedup_vs_compile": self.speedup_vs_compile,
            "candidate_spread_ms": self.candidate.spread_ms if self.candidate else None,
            "reference_spread_ms": self.reference.spread_ms if self.reference else None,
            "flags": list(self.flags),
            "trials": [dataclasses.asdict(t) for t in self.trials],
            "timings": {
                "candidate_ms": list(self.candidate.samples_ms) if self.candidate else [],
                "reference_ms": list(self.reference.samples_ms) if self.reference else [],
                "candidate_wall_ms": self.candidate.wall_ms if self.candidate else None,
                "reference_wall_ms": self.reference.wall_ms if self.reference else None,
                "candidate_early_exit": bool(self.candidate and self.candidate.early_exit),
            },
            "stages": dict(self.stages),
            "fingerprint": dict(self.fingerprint),
            "resources": [dict(r) for r in self.resources],
        }


def failed(status: Status, reason: str, **kw: Any) -> Verdict:
    return Verdict(status=status, reason=reason, **kw)
