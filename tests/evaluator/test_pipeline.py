"""Several candidates in flight: compiles and checks overlap, timing phases never do."""
from __future__ import annotations

import dataclasses
import statistics
import threading
import time

from evaluator.cascade import EvalConfig, Evaluator
from evaluator.devicelock import DeviceLock
from evaluator.verdict import Timing
from tests.conftest import FAST_TIMING
from tests.data.candidates import FAST, slow


def test_timing_is_exclusive_and_preferred():
    lock, log, guard = DeviceLock(), [], threading.Lock()

    def work(kind: str, name: str, hold: float) -> None:
        with getattr(lock, kind)():
            with guard:
                log.append(("in", kind, name, time.monotonic()))
            time.sleep(hold)
            with guard:
                log.append(("out", kind, name, time.monotonic()))

    threads = [threading.Thread(target=work, args=("shared", f"s{i}", 0.2)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    timer = threading.Thread(target=work, args=("exclusive", "t", 0.1))
    timer.start()
    time.sleep(0.05)
    late = threading.Thread(target=work, args=("shared", "late", 0.05))  # must wait behind the timer
    late.start()
    for t in [*threads, timer, late]:
        t.join()
    inside: set[str] = set()
    for event, kind, name, _ in sorted(log, key=lambda e: e[3]):
        if event == "in":
            assert "t" not in inside and (kind != "exclusive" or not inside), (name, inside)
            inside.add(name)
        else:
            inside.discard(name)
    order = [n for e, _, n, _ in sorted(log, key=lambda e: e[3]) if e == "in"]
    assert order.index("t") < order.index("late")
    # the three shared holders overlapped each other
    s_in = [ts for e, k, n, ts in log if e == "in" and n.startswith("s")]
    s_out = [ts for e, k, n, ts in log if e == "out" and n.startswith("s")]
    assert max(s_in) < min(s_out)


def test_concurrent_evaluations_share_one_evaluator(evaluator, small_task):
    results = {}

    def run(name: str, source: str) -> None:
        results[name] = evaluator.evaluate(small_task, source)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in
               (("fast", FAST), ("slow", slow()), ("slow2", slow(prelude="# again\n")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {n: v.status.value for n, v in results.items()} == {"fast": "ok", "slow": "ok", "slow2": "ok"}
    assert results["slow"].speedup < 1.0


def test_the_reference_figure_pools_its_first_timing_windows(sandbox, small_task):
    cfg = EvalConfig(timeout_s=60, timing=dataclasses.replace(FAST_TIMING, reference_windows=3,
                                                              reference_max_age_s=600.0))
    ev = Evaluator(sandbox, cfg)
    try:
        refs = [ev.evaluate(small_task, FAST).reference for _ in range(4)]
    finally:
        ev.close()
    sizes = [len(r.samples_ms) for r in refs]
    assert sizes[0] < sizes[1] < sizes[2] == sizes[3]  # one more window per evaluation, then reused
    cut = [0, sizes[0], sizes[1], sizes[2]]
    windows = [Timing.from_samples(list(refs[2].samples_ms[a:b]), 0.0) for a, b in zip(cut, cut[1:])]
    assert refs[2].median_ms == statistics.median(w.median_ms for w in windows) and refs[3] == refs[2]
    assert refs[1].samples_ms[:sizes[0]] == refs[0].samples_ms  # the first window is kept, not re-drawn
    ev = Evaluator(sandbox, cfg)
    try:
        ev.warm(small_task)  # all three windows up front
        warmed = [ev.evaluate(small_task, FAST).reference for _ in range(2)]
    finally:
        ev.close()
    assert warmed[0] == warmed[1] and len(warmed[0].samples_ms) >= 3 * FAST_TIMING.min_rounds  # a sample a round


def test_pooled_timing_takes_the_median_of_the_windows_medians():
    a = Timing.from_samples([1.0, 1.0, 1.0], 5.0)
    b = Timing.from_samples([2.0, 2.0, 9.0], 6.0)
    c = Timing.from_samples([1.5, 1.5], 4.0, early_exit=True)
    p = Timing.pooled([a, b, c])
    assert p.median_ms == 1.5 and p.samples_ms == (1.0, 1.0, 1.0, 2.0, 2.0, 9.0, 1.5, 1.5)
    assert p.wall_ms == 15.0 and p.early_exit and Timing.pooled([a]) is a
