"""The supervisor's clock is the authority on a candidate's time (evaluator/rounds.py).

Each attack stands for native code that took over the worker's clock or its loop: written in
Python with the static screen off (loose_evaluator), so the run-time checks must hold alone.
"""
from __future__ import annotations

import dataclasses

from evaluator import rounds
from evaluator.cascade import EvalConfig, Evaluator
from evaluator.rules import Policy
from tests.conftest import FAST_TIMING
from tests.data.candidates import FAST, slow

SLOWED_CLOCK = '''import sys
_probe = sys.modules["evaluator.jail.probe"]
_real_clock = _probe._clock_ns
_probe._clock_ns = lambda: int(_real_clock() / 1.3)
'''


def test_a_slowed_worker_clock_does_not_move_the_figure(loose_evaluator, small_task):
    """The issue's attack: the probe's clock slowed 1.3x. Its claims shrink by 1.3x; the figure,
    the supervisor's, does not follow them."""
    honest = loose_evaluator.evaluate(small_task, slow())
    forged = loose_evaluator.evaluate(small_task, slow(prelude=SLOWED_CLOCK))
    assert honest.status.value == "ok" and forged.status.value in ("ok", "rejected"), forged.reason
    if forged.status.value == "rejected":
        assert "timing_mismatch" in forged.reason
        return
    ratio = lambda v: v.candidate.median_ms / v.candidate.claimed_median_ms
    assert 0.75 < ratio(honest) < 1.3, (honest.candidate.median_ms, honest.candidate.claimed_median_ms)
    # the claims shrink 1.3x, the figure stays: its ratio to the claims grows by about 1.3x
    assert ratio(forged) > 1.12 * ratio(honest), (forged.candidate, honest.candidate)
    assert forged.speedup < 1.0  # still the honest slow kernel


def test_a_round_that_reports_fewer_calls_is_a_malformed_reply(loose_evaluator, small_task):
    prelude = '''import sys
_probe = sys.modules["evaluator.jail.probe"]
_real = _probe.Probe.do_go
def _fake(self, meta, tensors):
    self.staged = self.staged[:1]  # do one call of the round, claim the round
    return _real(self, meta, tensors)
_probe.Probe.do_go = _fake
'''
    v = loose_evaluator.evaluate(small_task, slow(prelude=prelude))
    assert v.status.value == "rejected" and "malformed_reply: the worker reported 1 claims_ms" in v.reason, v.reason


def test_every_timed_output_is_checked(sandbox, small_task):
    """A kernel that skips its work on some timed calls (returning the last output again) is
    caught by the checksums of every call, whichever calls it picks. At least 40 timed calls,
    so that a loaded machine's short timing phase still reaches the skipped ones (calls > 14:
    after the correctness trials)."""
    init = "        self.calls = 0\n        self.kept = None\n"
    forward = """
        self.calls += 1
        if self.calls > 14 and self.calls % 4 == 0 and self.kept is not None:
            return self.kept.clone()
        out = torch.empty_like(x)
        _lib.softmax_slow(out, x, x.shape[0], x.shape[1])
        self.kept = out
        return out"""
    timing = dataclasses.replace(FAST_TIMING, min_iters=40)
    ev = Evaluator(sandbox, EvalConfig(timeout_s=60, timing=timing, policy=Policy(static_screen=False)))
    try:
        v = ev.evaluate(small_task, slow(init=init, forward=forward))
    finally:
        ev.close()
    assert v.status.value == "incorrect" and "post-timing" in v.reason, (v.status, v.reason)


def test_rounds_hold_many_calls_of_a_small_kernel(evaluator, small_task):
    v = evaluator.evaluate(small_task, FAST)
    assert v.status.value == "ok", v.reason
    cand, ref = v.candidate, v.reference
    assert len(cand.samples_ms) >= 3 and all(k > 1 for k in cand.calls)  # several calls per round
    assert ref.round_overhead_ms > 0 and ref.overhead_ms >= 0  # measured on the reference's worker
    checked = next(t for t in v.trials if t.name == "timed/checksums")
    assert checked.ok and f"{sum(cand.calls)} of {sum(cand.calls)}" in checked.note


def test_measure_sizes_rounds_from_the_second_warmup_round():
    """rounds.measure against a scripted worker: the first warm-up round pays a lazy set-up
    (100 ms), the second sizes the rounds; the figure is wall time less the overhead."""
    import time

    seen: list[tuple[int, int]] = []

    def call(kind, meta):
        if kind == "stage":
            seen.append((meta["first"], meta["calls"]))
            return "staged", {"bytes_per_call": 16}, []
        if kind == "go":
            first, k = seen[-1]
            time.sleep((0.1 if first < -2 else 0.0) + k * 0.001)
            return "went", {"claims_ms": [1.0] * k, "synced_ms": [1.0] * k, "checksums": [[]] * k}, []
        return "pong", {}, []

    params = {"seed": 1, "sign_seed": 2, "warmup": 2, "min_iters": 10, "max_iters": 100, "target_s": 0.0,
              "round_ms": 10.0, "min_rounds": 3}
    r = rounds.measure(call, params, rounds.Overhead(round_ms=0.0, call_ms=0.0))
    assert seen[:2] == [(-4, 2), (-2, 2)]
    assert 5 <= r.calls[0] <= 10  # ~1 ms a call by the second warm-up round: ~10 ms rounds
    assert len(r.calls) >= 3 and sum(r.calls) >= 10
    assert all(0.9 < x < 2.0 for x in r.per_call_ms)  # ~1 ms a call by the supervisor's clock
    assert sorted(r.sums) == list(range(sum(r.calls)))
