"""The evaluator's typed results: what every other part of kernelwright trusts.

A Verdict is decided by the supervisor from raw data; nothing here is filled from what the
candidate's worker claims about itself.
"""
from __future__ import annotations

import dataclasses
import enum
import statistics
from collections.abc import Sequence
from typing import Any, TypedDict

from evaluator.coverage import Coverage


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
    """One side's timing (candidate or reference), in ms. samples_ms are per timing round
    (evaluator/rounds.py): by the supervisor's clock for a candidate, by the trusted worker's
    clock for the reference; claimed_ms are the candidate worker's own per-round readings."""

    samples_ms: tuple[float, ...]
    median_ms: float
    spread_ms: float  # interquartile range
    wall_ms: float  # supervisor's own clock around the whole timing phase
    early_exit: bool = False
    overhead_ms: float = 0.0  # per call: round time outside the timed calls (measured on the reference)
    warmup_ms: tuple[float, ...] = ()
    claimed_ms: tuple[float, ...] = ()  # per round: the mean of what the worker's clock said
    round_overhead_ms: float = 0.0  # per round: a request's round trip
    calls: tuple[int, ...] = ()  # calls per round

    @staticmethod
    def from_samples(samples_ms: list[float], wall_ms: float, early_exit: bool = False,
                     overhead_ms: float = 0.0, warmup_ms: Sequence[float] = (), **rest: Any) -> Timing:
        s = sorted(samples_ms)
        n = len(s)

        def q(p: float) -> float:
            if n == 1:
                return s[0]
            x = p * (n - 1)
            lo = int(x)
            hi = min(lo + 1, n - 1)
            return s[lo] + (s[hi] - s[lo]) * (x - lo)

        return Timing(tuple(samples_ms), q(0.5), q(0.75) - q(0.25), wall_ms, early_exit, overhead_ms,
                      tuple(warmup_ms), **rest)

    @staticmethod
    def pooled(windows: list[Timing]) -> Timing:
        """Several timing windows of one side as one: the median of the windows' medians (a
        window the machine slowed down moves it least), the samples and spread of all of them."""
        if len(windows) == 1:
            return windows[0]
        t = Timing.from_samples([x for w in windows for x in w.samples_ms], sum(w.wall_ms for w in windows),
                                any(w.early_exit for w in windows),
                                sum(w.overhead_ms for w in windows) / len(windows), list(windows[-1].warmup_ms),
                                claimed_ms=tuple(x for w in windows for x in w.claimed_ms),
                                round_overhead_ms=sum(w.round_overhead_ms for w in windows) / len(windows),
                                calls=tuple(x for w in windows for x in w.calls))
        return dataclasses.replace(t, median_ms=statistics.median(w.median_ms for w in windows))

    @property
    def claimed_median_ms(self) -> float | None:
        return statistics.median(self.claimed_ms) if self.claimed_ms else None


class TimingsRecord(TypedDict):
    candidate_ms: list[float]  # per round, by the supervisor's clock
    reference_ms: list[float]
    candidate_wall_ms: float | None
    reference_wall_ms: float | None
    candidate_early_exit: bool
    candidate_claimed_ms: list[float]  # per round: what the candidate worker's clock said
    candidate_calls: list[int]
    reference_calls: list[int]
    overhead_ms: float | None
    round_overhead_ms: float | None


class VerdictRecord(TypedDict):
    """A verdict as JSON: what `kernelwright eval --json` prints, rewards read and the store keeps."""
    status: str
    reason: str
    correct: bool
    speedup: float | None
    candidate_ms: float | None
    reference_ms: float | None
    reference_compiled_ms: float | None
    speedup_vs_compile: float | None
    candidate_spread_ms: float | None
    reference_spread_ms: float | None
    flags: list[str]
    trials: list[dict[str, Any]]
    timings: TimingsRecord
    stages: dict[str, float]
    fingerprint: dict[str, Any]
    resources: list[dict[str, Any]]  # ptxas's per-kernel report
    coverage: float | None  # the share of sampled time in the candidate's own code
    attribution: dict[str, Any] | None
    peak_fraction: float | None
    bound: str | None
    reference_peak_fraction: float | None
    policy: str
    torch_ops: list[str]


class EvaluationRecord(VerdictRecord):
    """A verdict as the store records it: with the worker's log (untrusted text)."""
    log: str


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
    coverage: Coverage | None = None  # where the timed rounds' CPU time went, sampled from outside
    # ok verdicts measured against the machine's ceilings (evaluator/roofline.py): the share of
    # peak the candidate reached, whether memory or compute bounds it, and eager's share
    peak_fraction: float | None = None
    bound: str | None = None  # "memory" or "compute"
    reference_peak_fraction: float | None = None
    policy: str = "strict"  # the rules it was judged under (evaluator/rules.py POLICIES)
    torch_ops: tuple[str, ...] = ()  # PyTorch compute ops forward ran (only policies other than strict allow any)

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

    def to_json(self) -> VerdictRecord:
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
                "candidate_claimed_ms": list(self.candidate.claimed_ms) if self.candidate else [],
                "candidate_calls": list(self.candidate.calls) if self.candidate else [],
                "reference_calls": list(self.reference.calls) if self.reference else [],
                "overhead_ms": self.reference.overhead_ms if self.reference else None,
                "round_overhead_ms": self.reference.round_overhead_ms if self.reference else None,
            },
            "stages": dict(self.stages),
            "fingerprint": dict(self.fingerprint),
            "resources": [dict(r) for r in self.resources],
            "coverage": self.coverage.share if self.coverage else None,
            "attribution": self.coverage.to_json() if self.coverage else None,
            "peak_fraction": self.peak_fraction,
            "bound": self.bound,
            "reference_peak_fraction": self.reference_peak_fraction,
            "policy": self.policy,
            "torch_ops": list(self.torch_ops),
        }

    def record(self) -> EvaluationRecord:
        """What the store keeps of this verdict."""
        return {**self.to_json(), "log": self.log}


def failed(status: Status, reason: str, **kw: Any) -> Verdict:
    return Verdict(status=status, reason=reason, **kw)
