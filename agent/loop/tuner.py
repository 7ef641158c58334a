"""Search strategies over a knob space, in the Kernel Tuner manner.

A strategy is a small generator over a space: it yields the next configuration to try and
is sent back its score (lower is better: the measured milliseconds; None for a failed or
invalid configuration). All strategies share the loop's budget, never yield a configuration
twice, and stop when the space is exhausted. Scores of configurations already measured (in
the store, by earlier runs) can be passed in as `known`: they cost nothing.
"""
from __future__ import annotations

import math
import random
import statistics
from typing import Any, Callable, Generator, Mapping, Sequence

from agent.loop.knobs import KnobSpace

Config = dict[str, Any]
Score = float | None
Search = Generator[Config, Score, None]
_key = lambda c: tuple(sorted(c.items()))


def _better(a: Score, b: Score) -> bool:
    return a is not None and (b is None or a < b)


def exhaustive(space: KnobSpace, start: Config, rng: random.Random) -> Search:
    yield dict(start)
    for c in space.configs():
        if _key(c) != _key(start):
            yield c


def random_search(space: KnobSpace, start: Config, rng: random.Random) -> Search:
    rest = [c for c in space.configs() if _key(c) != _key(start)]
    rng.shuffle(rest)
    yield dict(start)
    for c in rest:  # noqa: UP028 - not `yield from`: a list iterator cannot take send()
        yield c


def _neighbours(space: KnobSpace, c: Config) -> list[Config]:
    """Configurations one step away: one knob moved to an adjacent value (values are ordered)."""
    return [n for name in space.names for d in (-1, 1) if (n := _step(space, c, name, d)) is not None]


def local_search(space: KnobSpace, start: Config, rng: random.Random) -> Search:
    """Best-improvement hill climbing from the default, with random restarts when stuck."""
    seen: dict[tuple, Score] = {}
    current, score = dict(start), None
    while True:
        if _key(current) not in seen:
            seen[_key(current)] = score = yield current
        improved = False
        for n in sorted(_neighbours(space, current), key=lambda _: rng.random()):
            if _key(n) in seen:
                continue
            s = seen[_key(n)] = yield n
            if _better(s, score):
                current, score, improved = n, s, True
        if not improved:
            fresh = [c for c in space.configs() if _key(c) not in seen]
            if not fresh:
                return
            current, score = rng.choice(fresh), None


def _step(space: KnobSpace, c: Config, name: str, d: int) -> Config | None:
    """`c` with knob `name` moved d places along its values, if that is a valid configuration."""
    values = list(space.values(name))
    j = (values.index(c[name]) if c[name] in values else 0) + d
    if not 0 <= j < len(values):
        return None
    n = {**c, name: values[j]}
    return n if space.is_valid(n) else None


def pattern_search(space: KnobSpace, start: Config, rng: random.Random) -> Search:
    """Coordinate moves from the current point (Hooke-Jeeves style): a move that pays is pushed
    further the same way at once, since knob landscapes are mostly monotone near an optimum;
    a random restart when no single move pays (the Tuner keeps the best of all)."""
    seen: dict[tuple, Score] = {}
    cur: Config = dict(start)
    cur_s = seen[_key(cur)] = yield cur
    while True:
        improved = False
        moves = [(name, d) for name in space.names for d in (-1, 1)]
        rng.shuffle(moves)
        for name, d in moves:
            c = _step(space, cur, name, d)
            while c is not None and _key(c) not in seen:
                s = seen[_key(c)] = yield c
                if not _better(s, cur_s):
                    break
                cur, cur_s, improved = c, s, True
                c = _step(space, cur, name, d)
        if not improved:
            fresh = [c for c in space.configs() if _key(c) not in seen]
            if not fresh:
                return
            cur = rng.choice(fresh)
            cur_s = seen[_key(cur)] = yield cur


def evolutionary(space: KnobSpace, start: Config, rng: random.Random, population: int = 6) -> Search:
    """A small genetic search: tournament parents, uniform crossover, one-knob mutation."""
    seen: dict[tuple, Score] = {}
    pool: list[tuple[Score, Config]] = []

    def add(c: Config, s: Score) -> None:
        pool.append((s, c))
        pool.sort(key=lambda x: math.inf if x[0] is None else x[0])
        del pool[population:]

    seeds = [dict(start)] + rng.sample(list(space.configs()), min(population - 1, space.size))
    for c in seeds:
        if _key(c) not in seen:
            seen[_key(c)] = s = yield c
            add(c, s)
    for _ in range(100 * space.size):
        if len(seen) >= space.size:
            return
        a, b = (min(rng.sample(pool, min(2, len(pool))), key=lambda x: math.inf if x[0] is None else x[0])[1]
                for _ in range(2))
        child = {k: (a if rng.random() < 0.5 else b)[k] for k in space.names}
        if rng.random() < 0.7:
            k = rng.choice(space.names)
            child[k] = rng.choice(space.values(k))
        if space.is_valid(child) and _key(child) not in seen:
            seen[_key(child)] = s = yield child
            add(child, s)
    rest = [c for c in space.configs() if _key(c) not in seen]  # breeding stalled: the rest, at random
    rng.shuffle(rest)
    for c in rest:
        yield c


STRATEGIES: dict[str, Callable[..., Search]] = {
    "local": local_search, "pattern": pattern_search, "random": random_search, "exhaustive": exhaustive,
    "evolutionary": evolutionary,
}


def search(name: str, space: KnobSpace, start: Config, rng: random.Random,
           known: Mapping[tuple, Score] | None = None) -> Tuner:
    if name not in STRATEGIES:
        raise ValueError(f"unknown tuner strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return Tuner(STRATEGIES[name](space, start, rng), dict(known or {}))


class Tuner:
    """Drives a strategy: next() gives the configuration to measure, report() its score.
    Configurations with a known score are answered from memory and never measured twice."""

    def __init__(self, gen: Search, known: dict[tuple, Score]):
        self._gen, self._known = gen, known
        self.history: list[tuple[Config, Score]] = []
        self.done = False
        self._pending = self._advance(None, first=True)

    def _advance(self, score: Score, first: bool = False) -> Config | None:
        try:
            c = next(self._gen) if first else self._gen.send(score)
            while _key(c) in self._known:
                s = self._known[_key(c)]
                self.history.append((c, s))
                c = self._gen.send(s)
            return c
        except StopIteration:
            self.done = True
            return None

    def next(self) -> Config | None:
        return self._pending

    def report(self, config: Config, score: Score) -> None:
        if self._pending is None or _key(config) != _key(self._pending):
            raise ValueError("report() must answer the configuration next() gave")
        self._known[_key(config)] = score
        self.history.append((config, score))
        self._pending = self._advance(score)

    def best(self) -> tuple[Config | None, Score]:
        scored = [(s, c) for c, s in self.history if s is not None]
        if not scored:
            return None, None
        s, c = min(scored, key=lambda x: x[0])
        return c, s


def key(config: Mapping[str, Any]) -> tuple:
    return _key(dict(config))


def leader(measured: Mapping[Any, Sequence[float]]) -> Any:
    """What has the lowest median of its measurements (None when nothing has one)."""
    scored = {k: statistics.median(v) for k, v in measured.items() if v}
    return min(scored, key=scored.__getitem__) if scored else None


def to_confirm(measured: Mapping[Any, Sequence[float]], times: int = 2) -> Any:
    """The winner's-curse guard: when many things are measured once with noise, the lowest
    single measurement is biased low. The leader is measured again until it has `times`
    measurements; when a re-measurement demotes it, the new leader's turn comes. None: the
    leader is confirmed (or nothing leads)."""
    k = leader(measured)
    return k if k is not None and len(measured[k]) < times else None
