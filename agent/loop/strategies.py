"""Search strategies: what to ask for next, given what this run has learned about a task.

A strategy is a small function of the task's history in this run (candidates in the order
they were evaluated, with parents and rewards). It keeps no state of its own, so a resumed
run continues exactly where the killed one stopped: the history is rebuilt from the store.
- best-of-n: independent samples of the initial prompt;
- evolve: islands of lineages (a root's island is dealt round-robin, children inherit it);
  parents chosen by reward in a tournament; the best of each island migrates to the next
  every few evaluations; a failed island member is repaired, a good one improved;
- refine: one lineage, repaired while it fails, improved while it works.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Sequence

REPAIRS_IN_A_ROW = 2


@dataclasses.dataclass(frozen=True)
class Member:
    """One evaluated candidate of this run, as strategies see it."""

    id: str
    parent_id: str | None
    status: str
    speedup: float | None
    reward: float | None
    knobs: dict[str, Any] | None = None
    origin: str = "llm"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass(frozen=True)
class Ask:
    kind: str  # initial | contrastive | repair
    parent_id: str | None = None
    island: int = 0


Strategy = Callable[[Sequence[Member], random.Random], Ask]


def best_of_n(members: Sequence[Member], rng: random.Random) -> Ask:
    return Ask("initial")


def islands_of(members: Sequence[Member], n_islands: int) -> dict[str, int]:
    island: dict[str, int] = {}
    roots = 0
    for m in members:
        if m.parent_id in island:
            island[m.id] = island[m.parent_id]
        else:
            island[m.id] = roots % n_islands
            roots += 1
    return island


def _pick(pool: Sequence[Member], rng: random.Random, size: int = 3) -> Member:
    """Tournament selection by reward: strong parents are likely, weak ones still possible."""
    entrants = rng.sample(list(pool), min(size, len(pool)))
    return max(entrants, key=lambda m: (m.reward if m.reward is not None else -9.0, m.speedup or 0.0))


def _repair_or_restart(chain: Sequence[Member], island: int) -> Ask:
    failures = 0
    for m in reversed(chain):
        if m.ok:
            break
        failures += 1
    if chain and not chain[-1].ok and failures <= REPAIRS_IN_A_ROW:
        return Ask("repair", chain[-1].id, island)
    return Ask("initial", None, island)


def evolve(members: Sequence[Member], rng: random.Random, n_islands: int = 3, migrate_every: int = 6) -> Ask:
    island = islands_of(members, n_islands)
    sizes = [sum(1 for v in island.values() if v == i) for i in range(n_islands)]
    target = min(range(n_islands), key=lambda i: (sizes[i], i))
    own = [m for m in members if island[m.id] == target]
    pool = [m for m in own if m.ok]
    if len(members) >= migrate_every:  # the best of the neighbouring island migrates in
        source = (target - 1) % n_islands
        migrants = [m for m in members if island[m.id] == source and m.ok]
        if migrants and n_islands > 1:
            pool.append(max(migrants, key=lambda m: m.reward or -9.0))
    if not pool:
        return _repair_or_restart(own, target)
    if own and not own[-1].ok and sum(1 for m in own[-REPAIRS_IN_A_ROW:] if not m.ok) < REPAIRS_IN_A_ROW:
        return Ask("repair", own[-1].id, target)
    return Ask("contrastive", _pick(pool, rng).id, target)


def refine(members: Sequence[Member], rng: random.Random) -> Ask:
    if not members:
        return Ask("initial")
    by_id = {m.id: m for m in members}
    chain: list[Any] = []
    cur: Any = members[-1]
    while cur is not None and cur not in chain:
        chain.insert(0, cur)
        cur = by_id.get(cur.parent_id) if cur.parent_id else None
    if not chain[-1].ok:
        return _repair_or_restart(chain, 0)
    best = max((m for m in chain if m.ok), key=lambda m: m.reward or -9.0)
    return Ask("contrastive", best.id)


STRATEGIES: dict[str, Strategy] = {"best-of-n": best_of_n, "evolve": evolve, "refine": refine}
