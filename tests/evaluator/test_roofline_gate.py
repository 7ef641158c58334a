"""The physical-bound gate and the peak fraction of ok verdicts (evaluator/roofline.py in the cascade).

A task that declares far more work than its reference does makes an honest kernel's time
impossibly short against the machine's ceilings: what a cached result or a forged clock would
look like. The gate must reject it with the figures; the same kernel on the task's true work is
ok with a peak fraction; a wrong kernel stays incorrect whatever the work says.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.cascade import MAX_RECHECKS, EvalConfig, Evaluator
from evaluator.verdict import Status
from tasks.spec import load_task
from tests.conftest import FAST_TIMING
from tests.data.candidates import FAST, slow

DATA = Path(__file__).resolve().parents[1] / "data"
# a terabyte and a teraFLOP per call: seconds of work at any CPU's ceilings, for a kernel of microseconds
CLAIM = '{"suite": "test", "flops": 1e12, "bytes": 1e12, '


@pytest.fixture(scope="module")
def gated(sandbox, ceilings):
    ev = Evaluator(sandbox, EvalConfig(timeout_s=60, timing=FAST_TIMING, ceilings=ceilings))
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def overclaimed(tmp_path_factory):
    source = (DATA / "softmax_small.py").read_text()
    assert '{"suite": "test", ' in source
    path = tmp_path_factory.mktemp("overclaimed") / "softmax_overclaimed.py"
    path.write_text(source.replace('{"suite": "test", ', CLAIM, 1))
    task = load_task(path)
    assert (task.meta.flops, task.meta.bytes) == (1e12, 1e12)
    return task


def test_an_honest_kernel_on_its_true_work_is_ok_with_a_peak_fraction(gated, small_task):
    v = gated.evaluate(small_task, FAST)
    assert v.status is Status.OK, v.reason
    assert 0 < v.peak_fraction < 1 and v.bound in ("memory", "compute")
    assert 0 < v.reference_peak_fraction < 1
    out = v.to_json()
    assert (out["peak_fraction"], out["bound"], out["reference_peak_fraction"]) == (
        v.peak_fraction, v.bound, v.reference_peak_fraction)


def test_a_time_beyond_the_ceilings_is_rejected_with_the_figures(gated, overclaimed):
    v = gated.evaluate(overclaimed, FAST)
    assert v.status is Status.REJECTED, (v.status, v.reason)
    assert v.reason.startswith("beyond_roofline:") and "declared work" in v.reason and "1e+12" in v.reason
    assert v.peak_fraction is None and v.speedup is None  # rejected: no figures to rank by
    assert [t.name for t in v.trials][-1] == "final"  # every correctness check ran first


def test_a_wrong_kernel_is_incorrect_before_it_is_beyond_the_roofline(gated, overclaimed):
    wrong = slow(forward="\n        out = torch.empty_like(x)\n        _lib.softmax_slow(out, x, x.shape[0], 1)\n"
                         "        return out")
    v = gated.evaluate(overclaimed, wrong)
    assert v.status is Status.INCORRECT, (v.status, v.reason)


def test_without_ceilings_there_is_no_peak_fraction_and_no_gate(sandbox, overclaimed):
    ev = Evaluator(sandbox, EvalConfig(timeout_s=60, timing=FAST_TIMING))
    try:
        v = ev.evaluate(overclaimed, FAST)
    finally:
        ev.close()
    assert v.status is Status.OK, v.reason
    assert (v.peak_fraction, v.bound, v.reference_peak_fraction) == (None, None, None)


def _deflated(c, by: float = 1000.0):
    """Ceilings as a busy machine could measure them: every figure far below the truth."""
    import dataclasses
    figures = ("copy_gbs", "read_gbs", "copy_gbs_cached", "read_gbs_cached", "fma_gflops")
    levels = [{**lv, "copy_gbs": lv["copy_gbs"] / by, "read_gbs": lv["read_gbs"] / by} for lv in c.details["levels"]]
    return dataclasses.replace(c, details={**c.details, "levels": levels},
                               **{f: getattr(c, f) / by for f in figures})


def test_ceilings_measured_low_are_measured_again_before_an_honest_kernel_is_rejected(sandbox, ceilings, small_task,
                                                                                     overclaimed):
    low = _deflated(ceilings)
    ev = Evaluator(sandbox, EvalConfig(timeout_s=60, timing=FAST_TIMING, ceilings=low))
    try:
        v = ev.evaluate(small_task, FAST)
        assert v.status is Status.OK, v.reason  # beyond the low figures, within the re-measured ones
        assert any(f.startswith("ceilings re-measured") for f in v.flags), v.flags
        assert ev.ceilings.copy_gbs > 100 * low.copy_gbs and 0 < v.peak_fraction < 1
        again = ev.evaluate(small_task, FAST)  # the figures stay raised: no second measurement
        assert again.status is Status.OK and not any(f.startswith("ceilings re-measured") for f in again.flags)
        cheat = ev.evaluate(overclaimed, FAST)  # a time beyond even the re-measured ceilings
        assert cheat.status is Status.REJECTED and cheat.reason.startswith("beyond_roofline:"), cheat.reason
        rechecks = ev._rechecks
        for _ in range(3):  # re-submitted in a loop: the measurements stop at MAX_RECHECKS
            assert ev.evaluate(overclaimed, FAST).status is Status.REJECTED
        assert rechecks <= ev._rechecks <= MAX_RECHECKS
    finally:
        ev.close()


def _gate(net_ms: float, wall_ms: list[float], calls: list[int]):
    """CandidateRun's physical-bound gate over made-up rounds: 1e8 bytes at 10 GB/s (out of cache)
    take at least 10 ms."""
    from types import SimpleNamespace

    from evaluator.candidate import CandidateRun
    from evaluator.rounds import Rounds
    from evaluator.verdict import Timing
    from tasks.work import Work
    from tests.evaluator.test_ceilings import made_up

    run = SimpleNamespace(ev=SimpleNamespace(ceilings=made_up(), recheck_ceilings=lambda: None),
                          work=Work(0.0, 1e8, "declared"), flags=[], peak={},
                          timing=Timing.from_samples([net_ms] * len(calls), sum(wall_ms)),
                          ref_timing=Timing.from_samples([50.0], 50.0),
                          rounds=Rounds(wall_ms=wall_ms, calls=calls), _reject=CandidateRun._reject)
    CandidateRun._resolve(run)  # type: ignore[arg-type]
    CandidateRun._roofline(run)  # type: ignore[arg-type]
    return run


def test_the_gate_judges_the_time_with_the_rounds_overhead_in():
    from evaluator.candidate import Fail

    # a loaded machine: the overhead measured apart swallowed the whole round; per call with it,
    # 30 ms, well inside the ceilings: that is its figure (a lower bound of its speedup), not a rejection
    run = _gate(0.0, [300.0, 330.0], [10, 11])
    assert any(f.startswith("timing_unresolved:") and "figure is 30 ms" in f for f in run.flags), run.flags
    assert run.timing.median_ms == pytest.approx(30.0) and run.peak["peak_fraction"] == pytest.approx(1 / 3)
    assert run.timing.samples_ms == pytest.approx((30.0, 30.0)) and run.timing.spread_ms == pytest.approx(0.0)
    # net 1 ms (10x the ceiling) but 30 ms a call with the overhead in: the overhead decides, not physics
    run = _gate(1.0, [300.0, 330.0], [10, 11])
    assert run.flags == [] and run.peak["peak_fraction"] == pytest.approx(10.0)
    # 0.5 ms a call even with the overhead in: beyond the machine, rejected
    with pytest.raises(Fail) as e:
        _gate(0.4, [5.0, 5.5], [10, 11])
    assert e.value.reason.startswith("beyond_roofline: 0.5 ms is 20.00x of the memory ceiling"), e.value.reason


def test_a_kernel_lost_in_the_rounds_overhead_keeps_its_verdict_and_a_finite_speedup(monkeypatch):
    """The timing rounds of a review-store run (rmsnorm's seed on a loaded machine): its own clock
    said 0.554 ms a call, the overhead measured on the reference swallowed every round, 1.51 ms a
    call with it in. The clock check compares its claims with the figure without the overhead;
    the speedup is computed from the time with it in: not timing_mismatch (the time with the
    overhead in against the claims), not an infinite, suspicious speedup."""
    from types import SimpleNamespace

    from evaluator import rounds
    from evaluator.candidate import CandidateRun
    from evaluator.rules import Policy
    from evaluator.verdict import Timing

    made_up = rounds.Rounds(per_call_ms=[0.0] * 6, claims_ms=[0.554] * 6, calls=[10] * 6, wall_ms=[15.1] * 6,
                            claimed=[0.554] * 60, synced=[0.554] * 60, phase_ms=120.0)
    monkeypatch.setattr(rounds, "measure", lambda *a, **k: made_up)
    run = SimpleNamespace(ev=SimpleNamespace(timing_cpus=(), cfg=SimpleNamespace(policy=Policy())), device="cpu",
                          flags=[], ref_timing=Timing.from_samples([0.9] * 6, 60.0), _reject=CandidateRun._reject,
                          _round_call=lambda: None, _round_window=None)
    run._resolve = lambda: CandidateRun._resolve(run)  # type: ignore[arg-type]
    CandidateRun._timed_rounds(run, {}, rounds.Overhead(2.0, 2.0), None)  # type: ignore[arg-type]
    assert run.timing.median_ms == pytest.approx(1.51) and run.timing.samples_ms == pytest.approx((1.51,) * 6)
    assert [f.split(":")[0] for f in run.flags] == ["timing_unresolved"], run.flags
