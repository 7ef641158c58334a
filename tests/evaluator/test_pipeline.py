"""Several candidates in flight: compiles and checks overlap, timing phases never do."""
from __future__ import annotations

import threading
import time

from evaluator.devicelock import DeviceLock
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
