"""The knob search strategies over a synthetic landscape: each stays valid, never measures a
configuration twice, covers the space when the budget allows, and the climbers find a bowl's
bottom from the default with a fraction of the space."""
from __future__ import annotations

import random

import pytest

from agent.loop import tuner
from agent.loop.knobs import KnobSpace

SPACE = KnobSpace(knobs=(("TILE", (1, 2, 4, 8, 16, 32)), ("UNROLL", (1, 2, 3, 4, 5, 6, 7, 8)), ("VEC", (1, 4))),
                  constraints=("TILE * UNROLL <= 128",))
START = {"TILE": 1, "UNROLL": 1, "VEC": 1}


def bowl(c: dict) -> float | None:
    """Milliseconds: lowest at TILE=16, UNROLL=6, VEC=4; VEC=1 with UNROLL=7 fails to build."""
    if c["VEC"] == 1 and c["UNROLL"] == 7:
        return None
    return 1.0 + abs(SPACE.values("TILE").index(c["TILE"]) - 4) + abs(c["UNROLL"] - 6) * 0.5 + (c["VEC"] == 1)


def run(name: str, budget: int, seed: int = 0) -> tuner.Tuner:
    t = tuner.search(name, SPACE, START, random.Random(seed))
    for _ in range(budget):
        c = t.next()
        if c is None:
            break
        t.report(c, bowl(c))
    return t


@pytest.mark.parametrize("name", list(tuner.STRATEGIES))
def test_every_strategy_is_valid_never_repeats_and_covers_the_space(name):
    valid = list(SPACE.configs())
    t = run(name, budget=10 * len(valid))
    measured = [tuner.key(c) for c, _ in t.history]
    assert len(measured) == len(set(measured))  # never twice
    assert all(SPACE.is_valid(dict(k)) for k in measured)
    assert t.done and set(measured) == {tuner.key(c) for c in valid}  # with budget to spare: all of it
    assert t.history[0][0] == START  # the default (the author's guess) first
    assert t.best() == ({"TILE": 16, "UNROLL": 6, "VEC": 4}, 1.0)


def test_pattern_search_reaches_the_bottom_with_a_third_of_the_space():
    name = "pattern"
    size = sum(1 for _ in SPACE.configs())
    found = [run(name, budget=size // 3, seed=s).best()[1] for s in range(10)]
    assert all(f == 1.0 for f in found), found


def test_known_scores_are_answered_from_memory():
    known = {tuner.key(START): 9.0, tuner.key({"TILE": 1, "UNROLL": 1, "VEC": 4}): 8.0}  # its first two
    t = tuner.search("exhaustive", SPACE, START, random.Random(0), known=known)
    first = t.next()
    assert first is not None and tuner.key(first) not in known  # the two known ones cost nothing
    assert [s for _, s in t.history] == [9.0, 8.0]


def test_the_leader_is_measured_again_until_confirmed():
    seen = {"a": [1.0], "b": [1.1], "c": []}  # c failed: it never leads
    assert tuner.leader(seen) == "a" and tuner.to_confirm(seen) == "a"
    seen["a"].append(1.4)  # a's first figure was luck: its median is now 1.2
    assert tuner.leader(seen) == "b" and tuner.to_confirm(seen) == "b"
    seen["b"].append(1.05)
    assert tuner.leader(seen) == "b" and tuner.to_confirm(seen) is None
    assert tuner.to_confirm({}) is None and tuner.leader({"x": []}) is None
