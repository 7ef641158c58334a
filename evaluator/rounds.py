"""Timing rounds: the supervisor's clock is the authority on how long a call takes.

A round is K timed calls on inputs the worker staged beforehand (untimed, from the secret
timing seed): the supervisor sends "go" and reads the clock when the reply arrives. Nothing the
worker says about time enters a candidate's figure; its per-call clock readings are claims that
are only cross-checked. K is chosen so that a round lasts about `round_ms`, which keeps the round
trip (tens of microseconds) small next to the calls even for kernels of a few microseconds.

What a round costs besides the calls (the loop, each output's checksum, on a GPU the L2 flush
and synchronizes) is measured on the reference's worker, which runs only trusted code: there the
per-call clock is a fact, and the rest of the round is overhead, `call_ms` per call and
`round_ms` (a ping) per round. A candidate's figure for a round is its wall time less that
overhead, per call. Every output of every round is checksummed, so a call that skipped its work
shows when the supervisor compares the checksums with the reference's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from collections.abc import Mapping
from typing import Any, Callable, ContextManager

from evaluator.messages import GoRequest, MalformedReply, StageRequest

Call = Callable[..., tuple[str, dict[str, Any], list[Any]]]
STAGED_BYTES = 256 << 20  # inputs staged for one round at most
# A timed round stages no more inputs than stay in cache, so each call finds its inputs about as
# warm as right after they were made (as they would be in a model): kernels with large inputs get
# rounds of one call, where the round trip (~0.1 ms) is still small next to the call.
HOT_BYTES = 4 << 20
MAX_ROUND_CALLS = 2000


@dataclasses.dataclass(frozen=True)
class Overhead:
    """What a round costs outside the timed calls, measured on the reference's worker."""

    round_ms: float  # per round: a round of no calls (the request's round trip, the reply's framing)
    call_ms: float  # per call: the loop and the checksum (and flush and synchronizes on GPUs)


@dataclasses.dataclass
class Rounds:
    per_call_ms: list[float] = dataclasses.field(default_factory=list)  # per round: the figure
    claims_ms: list[float] = dataclasses.field(default_factory=list)  # per round: mean of the worker's claims
    calls: list[int] = dataclasses.field(default_factory=list)
    wall_ms: list[float] = dataclasses.field(default_factory=list)
    warmup_ms: list[float] = dataclasses.field(default_factory=list)  # per warm-up round, per call
    claimed: list[float] = dataclasses.field(default_factory=list)  # every per-call claim, in order
    synced: list[float] = dataclasses.field(default_factory=list)  # claims after a device-wide sync (GPUs)
    sums: dict[int, Any] = dataclasses.field(default_factory=dict)  # timed call index -> checksums
    last_index: int = -1
    early_exit: bool = False
    phase_ms: float = 0.0  # the supervisor's clock around the whole phase
    overhead: Overhead | None = None
    bytes_per_call: int = 0  # inputs staged per call

    @property
    def gross_ms(self) -> list[float]:
        """Per round, the time per call with the rounds' overhead left in: an upper bound of the
        kernel's own."""
        return [wall / k for wall, k in zip(self.wall_ms, self.calls)]


def empty_round_ms(call: Call, params: dict[str, Any], n: int = 5) -> float:
    """A round of no calls, at best (load only ever adds time): the request's round trip and
    the reply's framing, what every round costs whatever its size."""
    return min(_round(call, params, 0, 0, contextlib.nullcontext)[0] for _ in range(n))


def timed(call: Call, kind: str, meta: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
    """A request and its round trip in ms: by `call.timed` where the caller has one (a worker's
    call_timed: the arrival read in C, without the GIL), else by this thread's clock."""
    by_worker = getattr(call, "timed", None)
    if by_worker is not None:
        _, answer, _, ms = by_worker(kind, meta)
        return answer, ms
    t0 = time.perf_counter()
    _, answer, _ = call(kind, meta)
    return answer, (time.perf_counter() - t0) * 1e3


def _round(call: Call, params: dict[str, Any], first: int, calls: int,
           window: Callable[[], ContextManager[Any]]) -> tuple[float, dict[str, Any], int]:
    _, staged, _ = call("stage", StageRequest(seed=params["seed"], first=first, calls=calls,
                                           variant=params.get("variant")))
    with window():
        went, wall = timed(call, "go", GoRequest(compiled=bool(params.get("compiled")),
                                                 sign_seed=params.get("sign_seed", 0)))
    for key in ("claims_ms", "synced_ms", "checksums"):  # lists by their shape (evaluator/messages.py); their lengths here
        if len(went[key]) != calls:
            raise MalformedReply(f"malformed_reply: the worker reported {len(went[key])} {key} for {calls} calls")
    return wall, went, int(staged["bytes_per_call"])


def sampled_round(call: Call, params: dict[str, Any], first: int, per_call_ms: float, bytes_per_call: int,
                  window: Callable[[], ContextManager[Any]], length_ms: float = 20.0) -> int:
    """One more round, of about `length_ms`, without checksums, for the sampler of the worker's
    threads (evaluator/coverage.py): what it sees is the calls and the loop around them. Its time
    and outputs count for nothing. Returns how many calls it made."""
    calls = max(1, min(MAX_ROUND_CALLS, math.ceil(length_ms / max(per_call_ms, 1e-3))))
    if bytes_per_call:
        calls = max(1, min(calls, (STAGED_BYTES // 4) // bytes_per_call))
    call("stage", StageRequest(seed=params["seed"], first=first, calls=calls, variant=params.get("variant")))
    with window():
        call("go", GoRequest(compiled=bool(params.get("compiled")), sign_seed=params.get("sign_seed", 0), checksums=False))
    return calls


def _floats(xs: Any) -> list[float]:
    return [float(x) for x in xs]


def measure(call: Call, params: dict[str, Any], overhead: Overhead | None = None,
            slow_ms: float | None = None,
            window: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> Rounds:
    """Warm-up, then rounds until min_iters calls in min_rounds rounds are done and target_s of
    wall-clock time has passed (staging included), or max_iters calls. `overhead` None: this is
    the reference (trusted code), whose claims are its figure and whose overhead is measured
    here. `slow_ms`: stop after early_iters calls when clearly slower than that. `window`
    wraps each timed "go" (the cascade reads the worker's cgroup CPU time around it)."""
    t_phase = time.perf_counter()
    r = Rounds()
    trusted = overhead is None
    if overhead is None:
        fixed, per_call_extra = empty_round_ms(call, params), 0.0
    else:
        fixed, per_call_extra = overhead.round_ms, overhead.call_ms
    warmup = max(1, int(params["warmup"]))
    wall, per_bytes = 0.0, 0
    for k in range(2):  # the first warm-up round pays lazy set-up; the second sizes the rounds
        wall, _, per_bytes = _round(call, params, -warmup * (2 - k), warmup, contextlib.nullcontext)
        r.warmup_ms.append(max(0.0, (wall - fixed) / warmup - per_call_extra))
    estimate = max(r.warmup_ms[-1], 1e-3)
    size = max(1, min(MAX_ROUND_CALLS, math.ceil(float(params.get("round_ms", 10.0)) / estimate)))
    if per_bytes:
        size = max(1, min(size, HOT_BYTES // per_bytes))
    r.bytes_per_call = per_bytes
    min_iters, max_iters = int(params["min_iters"]), int(params["max_iters"])
    min_rounds, max_rounds = int(params.get("min_rounds", 5)), int(params.get("max_rounds", 200))
    target_s, early_iters = float(params["target_s"]), int(params.get("early_iters", 5))
    done, began, excess = 0, time.perf_counter(), []
    while True:
        k = max(1, min(size, max_iters - done))
        wall, went, _ = _round(call, params, done, k, window)
        claims = _floats(went["claims_ms"])
        mean_claim = sum(claims) / k
        r.claims_ms.append(mean_claim)
        r.per_call_ms.append(mean_claim if trusted else max(0.0, (wall - fixed) / k - per_call_extra))
        excess.append((wall - fixed) / k - mean_claim)
        r.calls.append(k)
        r.wall_ms.append(wall)
        r.claimed += claims
        r.synced += _floats(went["synced_ms"])
        for j, s in enumerate(went["checksums"]):
            r.sums[done + j] = s
        done += k
        r.last_index = done - 1
        if done >= max_iters or len(r.calls) >= max_rounds:
            break
        if (done >= min_iters and len(r.calls) >= min_rounds
                and time.perf_counter() - began >= target_s):
            break
        if slow_ms is not None and done >= early_iters and statistics.median(r.per_call_ms) > float(slow_ms):
            r.early_exit = True
            break
    if trusted:
        r.overhead = Overhead(fixed, max(0.0, statistics.median(excess)))
    r.phase_ms = (time.perf_counter() - t_phase) * 1e3
    return r
